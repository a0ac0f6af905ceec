"""Every registered op, gradchecked in float64 from a table; a meta-test fails if an op has no row."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import functional as F
from tapernn.ops import REGISTRY
from tapernn.tracing import emit

R = np.random.default_rng(7)


def randn(*shape):
    return R.standard_normal(shape)


def pos(*shape):
    return R.uniform(0.5, 2.0, shape)


BROADCAST = {  # shape pairs: scalar, row, column, full, and the reversed orders
    "scalar": ((3, 4), ()),
    "row": ((3, 4), (4,)),
    "column": ((3, 4), (3, 1)),
    "full": ((3, 4), (3, 4)),
    "scalar_first": ((), (3, 4)),
    "row_first": ((4,), (3, 4)),
    "outer": ((3, 1), (1, 4)),
}

ROWS = []  # (op name, row id, fn, arrays)


def row(op, rid, fn, *arrays):
    ROWS.append(pytest.param(op, fn, arrays, id=f"{op}-{rid}"))


for name, fn, make in [
    ("add", lambda a, b: a + b, randn),
    ("sub", lambda a, b: a - b, randn),
    ("mul", lambda a, b: a * b, randn),
    ("div", lambda a, b: a / b, pos),
    ("power", lambda a, b: a**b, pos),
    ("maximum", tn.maximum, randn),
    ("minimum", tn.minimum, randn),
]:
    for rid, (sa, sb) in BROADCAST.items():
        row(name, rid, fn, make(*sa) if name != "power" else pos(*sa), make(*sb))

row("power", "const-exponent", lambda a: a**3, randn(3, 4))
row(
    "maximum",
    "ties",
    lambda a: tn.maximum(a, a[:, :1]),
    np.array([[1.0, 1.0, 2.0], [0.5, 3.0, 0.5]]),
)
for name, fn, x in [
    ("neg", lambda x: -x, randn(3, 4)),
    ("exp", tn.exp, randn(3, 4)),
    ("log", tn.log, pos(3, 4)),
    ("tanh", tn.tanh, randn(3, 4)),
    ("sigmoid", tn.sigmoid, 3 * randn(3, 4)),
    ("relu", tn.relu, randn(3, 4)),
    ("sqrt", tn.sqrt, pos(3, 4)),
    ("abs", tn.abs, randn(3, 4)),
    ("stop_gradient", lambda x: x * 2 + tn.stop_gradient(x * 0), randn(3, 4)),
    # (its loss's gradient is not the derivative of its value: a zero loss keeps them equal;
    # test_add_loss_adds_the_loss_gradient checks the loss's part)
    ("add_loss", lambda x: F.add_loss(x * 2, tn.sum(x * 0)), randn(3, 4)),
    ("sign", lambda x: x * F.sign(x), randn(3, 4)),
    ("greater", lambda x: tn.where(F.greater(x, 0.1), x * x, -x), randn(3, 4)),
    ("equal", lambda x: tn.where(F.equal(x, x[:, :1]), 2 * x, x), randn(3, 4)),
    ("zeros", lambda x: x + tn.zeros_like(x), randn(3, 4)),
    ("ones", lambda x: x * tn.ones_like(x), randn(3, 4)),
    ("add_n", lambda x: tn.add_n([x, 2 * x, tn.tanh(x)]), randn(3, 4)),
    ("add_n", lambda x: tn.add_n([tn.sum(x), tn.sum(x * x), tn.max(x)]), randn(3, 4)),
]:
    row(name, "unary", fn, x)
# a float32 round trip is linear but coarse: a wide step keeps rounding out of the difference
CAST_ROW = ("cast", lambda x: F.cast(F.cast(x, np.float32), np.float64) * 3.0, randn(3, 4))
row(CAST_ROW[0], "roundtrip", CAST_ROW[1], CAST_ROW[2])
row("where", "full", lambda a, b: tn.where(F.greater(a, b), a, b * 2), randn(3, 4), randn(3, 4))
row("where", "broadcast", lambda a, b: tn.where(F.greater(a, 0), a, b), randn(3, 4), randn(4))
for axis, keep in [(None, False), (0, False), (1, True), ((0, 1), True)]:
    row("sum", f"{axis}-{keep}", lambda x, a=axis, k=keep: tn.sum(x, a, k), randn(3, 4))
    row("max", f"{axis}-{keep}", lambda x, a=axis, k=keep: tn.max(x, a, k), randn(3, 4))
    row("logsumexp", f"{axis}-{keep}", lambda x, a=axis, k=keep: tn.logsumexp(x, a, k), randn(3, 4))
row("max", "ties", lambda x: tn.max(x, 1), np.array([[1.0, 2.0, 2.0], [0.0, -1.0, 0.0]]))
row("sum", "mean", lambda x: tn.mean(x, 1), randn(3, 4))
# (sum(a * b, axis) without the product: the peephole weights' gradient over a loop's steps)
for axis, keep in [((0, 1), False), ((1,), True), ((0, 2), False)]:
    row(
        "sum_mul",
        f"{axis}-{keep}",
        lambda a, b, ax=axis, k=keep: emit("sum_mul", a, b, axis=ax, keepdims=k),
        randn(3, 2, 4),
        randn(3, 2, 4),
    )
row("broadcast_to", "row", lambda x: tn.broadcast_to(x, (3, 4)), randn(4))
row("softmax", "last", lambda x: tn.softmax(x), randn(3, 5))
row("softmax", "axis0", lambda x: tn.softmax(x, axis=0), randn(3, 5))
row("log_softmax", "last", lambda x: tn.log_softmax(x), randn(3, 5))
row("log_softmax", "1d", lambda x: tn.log_softmax(x), randn(5))
row("matmul", "2d", lambda a, b: a @ b, randn(3, 4), randn(4, 2))
row("matmul", "batched", lambda a, b: a @ b, randn(2, 3, 4), randn(4, 2))
row("matmul", "batch-broadcast", lambda a, b: a @ b, randn(2, 1, 3, 4), randn(3, 4, 2))
row("matmul", "vector-left", lambda a, b: a @ b, randn(4), randn(4, 2))
row("matmul", "vector-right", lambda a, b: tn.matmul(a, b), randn(3, 4), randn(4))
row("matmul", "dot", lambda a, b: a @ b, randn(4), randn(4))
row("reshape", "flat", lambda x: tn.reshape(x, (-1,)) * 2, randn(3, 4))
row("transpose", "2d", lambda x: x.T, randn(3, 4))
row("transpose", "3d", lambda x: tn.transpose(x, (2, 0, 1)), randn(2, 3, 4))
row("transpose_copy", "2d", lambda x: emit("transpose_copy", x) * 1.5, randn(3, 4))
row("concat", "axis1", lambda a, b: tn.concat([a, b, a], axis=-1), randn(3, 2), randn(3, 4))
row("concat", "stack", lambda a, b: tn.stack([a, b], axis=1), randn(3, 4), randn(3, 4))
row("getitem", "slice", lambda x: x[:, 1:3], randn(3, 4))
row("getitem", "int-neg", lambda x: x[-1], randn(3, 4))
row("getitem", "step-newaxis", lambda x: x[::2, None, ...], randn(3, 4))
row("getitem", "advanced-dupes", lambda x: x[[0, 2, 0]], randn(3, 4))
row("getitem", "split", lambda x: tn.concat(tn.split(x, [1, 3], axis=1)[::-1], axis=1), randn(3, 4))
row(
    "index_grad", "slice", lambda g: F.emit_index_grad(g, (4, 5), (("s", 1, 3, None),)), randn(2, 5)
)
row(
    "index_grad",
    "advanced",
    lambda g: F.emit_index_grad(g, (4, 5), (("a", (1, 1, 3)),)),
    randn(3, 5),
)
IDS = np.array([[0, 3, 3], [1, 0, 2]])
row("embedding", "2d-ids", lambda w, ids: tn.embedding(w, ids), randn(4, 5), IDS)
row(
    "embedding_grad",
    "dupes",
    lambda g, ids: emit("embedding_grad", g, ids, n=4),
    randn(2, 3, 5),
    IDS,
)
TGT = np.array([[2], [0], [3]])
row("gather", "targets", lambda x, t: tn.gather(x, t, axis=1), randn(3, 4), TGT)
row("scatter_add", "targets", lambda g, t: emit("scatter_add", g, t, axis=1, n=4), randn(3, 1), TGT)


def _scan_rnn(h, xs, w):  # a body of the inputs' dtype, traced inside the outer trace
    body = tn.trace(
        lambda h, x, w: [tn.tanh(x @ w + h), tn.tanh(x @ w + h) * 2.0],
        np.zeros(h.shape, h.dtype),
        np.zeros(xs.shape[1:], h.dtype),
        np.zeros(w.shape, h.dtype),
    )
    r = tn.scan(body, [h], [xs], [w])
    return r.carries + r.ys


ROWS.append(
    pytest.param("scan", _scan_rnn, (randn(2, 3), randn(5, 2, 4), randn(4, 3)), id="scan-rnn")
)


@pytest.mark.parametrize("op,fn,arrays", ROWS)
def test_op_gradcheck(op, fn, arrays):
    graph = tn.trace(fn, *arrays)
    assert op in graph.op_counts(), f"row for {op} does not use it"
    options = {"eps": 1e-2, "atol": 1e-4} if op == "cast" else {}
    assert tn.gradcheck(fn, *arrays, **options)


def test_every_registered_op_has_a_row():
    covered = {p.values[0] for p in ROWS}
    # ops only passes create (after grad, so never differentiated) are tested with their pass
    internal = {name for name, op in REGISTRY.items() if op.internal}
    # (pack_panels, packed_matmul: numba's packed step GEMMs, tests/test_packed_gemm.py)
    assert internal <= {"fused", "pack_panels", "packed_matmul"}
    assert set(REGISTRY) - covered - internal == set()


@pytest.mark.parametrize("op,fn,arrays", ROWS)
def test_op_forward_matches_numpy_on_float32(op, fn, arrays):
    """The same table in float32: dtypes are preserved and values agree with float64."""
    arrays32 = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in arrays]
    g64 = tn.compile(tn.trace(fn, *arrays), passes=[])(*arrays)
    g32 = tn.compile(tn.trace(fn, *arrays32), passes=[])(*arrays32)
    for a, b in zip(
        np.atleast_1d(g64) if isinstance(g64, np.ndarray) else g64,
        np.atleast_1d(g32) if isinstance(g32, np.ndarray) else g32,
    ):
        assert np.asarray(b).dtype == (np.float64 if op == "cast" else np.float32)
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)


def test_gradcheck_detects_a_wrong_vjp(monkeypatch):
    import dataclasses

    from tapernn.ops import registry

    wrong = dataclasses.replace(REGISTRY["tanh"], vjp=lambda g, y, a, wants: (g * y,))
    monkeypatch.setitem(registry.REGISTRY, "tanh", wrong)
    with pytest.raises(tn.GradcheckError, match=r"input 0 \(x0\) entry"):
        tn.gradcheck(tn.tanh, randn(3))


def test_sigmoid_is_stable_in_both_tails():
    x = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = tn.compile(tn.trace(tn.sigmoid, x))(x)
    # (below a = -709.78, exp's limit, the result stays under the smallest normal number)
    assert 0 <= y[0] < np.finfo(np.float64).tiny and y[-1] == 1.0 and y[2] == 0.5
    np.testing.assert_allclose(y[1], np.exp(-40.0) / (1 + np.exp(-40.0)), rtol=1e-12)


def test_log_softmax_and_logsumexp_are_stable():
    x = np.array([[1000.0, 0.0, -1000.0], [-np.inf, 0.0, 1.0]])
    with np.errstate(over="raise", invalid="raise"):
        ls = tn.compile(tn.trace(tn.log_softmax, x))(x)
        lse = tn.compile(tn.trace(lambda v: tn.logsumexp(v, 1), x))(x)
    assert np.allclose(ls[0], [0.0, -1000.0, -2000.0])
    assert np.isfinite(lse).all() and np.isclose(lse[0], 1000.0)


def test_scalar_constants_keep_float32():
    x = np.ones((2, 2), np.float32)
    g = tn.trace(lambda v: tn.sigmoid(v * 0.5 + 1) / 3, x)
    assert all(n.dtype == np.float32 for n in g.nodes if n.dtype.kind == "f")


def test_stop_gradient_blocks_the_gradient():
    x = randn(3)
    out = tn.compile(tn.grad(tn.trace(lambda v: tn.sum(v * tn.stop_gradient(v)), x)))(x)
    np.testing.assert_allclose(out[1], x)  # d/dv of v*c is c, not 2v


def test_add_loss_adds_the_loss_gradient():
    x = randn(3)
    g = tn.grad(tn.trace(lambda v: tn.sum(F.add_loss(v * 2, tn.sum(v * v)) * 3), x))
    for passes in ([], None):
        out = tn.compile(g, passes=passes)(x)
        np.testing.assert_allclose(out[0], 6 * x.sum())  # the value: x*2 only
        np.testing.assert_allclose(out[1], 6 + 2 * x)  # d/dv: 3*2 from x, 2v from the loss
    with pytest.raises(tn.errors.ShapeError, match="must be a scalar"):
        tn.trace(lambda v: F.add_loss(v, v), x)


def test_float32_sigmoid_lowering_is_close_and_log_keeps_the_tail():
    x = np.linspace(-30, 30, 601).astype(np.float32)
    y = tn.compile(tn.trace(lambda v: tn.sigmoid(v) * 1.0, x))(x)
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(y, exact, atol=1.2e-7)
    logs = tn.compile(tn.trace(lambda v: tn.log(tn.sigmoid(v)), x))(x)
    assert np.all(np.isfinite(logs))  # tanh form would give log(0) below a = -17
    np.testing.assert_allclose(logs, np.log(exact), rtol=1e-5, atol=1e-6)
