"""scan_hoist: a compiled loop body's work on the invariants alone runs once per loop call (a
prologue), the step program reads its values; the loop equals a NumPy loop of the equations."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import passes as P
from tapernn import scan_run


def body(B, H, dtype):
    """h' = tanh(h @ (U * 2) + x @ [Wa Wb]): (U * 2) and the concat depend on invariants only."""

    def step(h, x, Wa, Wb, U):
        h2 = tn.tanh(h @ (U * 2.0) + x @ tn.concat([Wa, Wb], axis=1))
        return [h2, h2]

    def z(shape):
        return np.zeros(shape, dtype)

    return tn.trace(
        step,
        z((B, 2 * H)),
        z((B, 3)),
        z((3, H)),
        z((3, H)),
        z((2 * H, 2 * H)),
        names=["h", "x", "Wa", "Wb", "U"],
    )


def numpy_loop(h, xs, Wa, Wb, U):
    ys = []
    for x in xs:
        h = np.tanh(h @ (U * 2.0) + x @ np.concatenate([Wa, Wb], axis=1))
        ys.append(h)
    return h, np.stack(ys)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_invariant_work_runs_once_per_call_and_the_loop_is_unchanged(dtype):
    B, H, T = 2, 3, 5
    b = body(B, H, dtype)
    compiled = scan_run.compiled_body(b, None, tn.PlanOptions(), 2)
    assert compiled.prologue is not None
    step = compiled.graph
    inv = set(step.inputs[2:])
    for n in step.nodes:  # nothing in the step program reads only invariants, but views
        if n.op not in ("input", "constant", "transpose", "reshape", "getitem") and n.inputs:
            assert not all(i in inv for i in n.inputs), n
    assert {n.op for n in compiled.prologue.graph.nodes} >= {"mul", "concat"}
    assert any("computed once per loop call" in s for s in compiled.report.notes)

    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal(s).astype(dtype)
        for s in [(B, 2 * H), (T, B, 3), (3, H), (3, H), (2 * H, 2 * H)]
    ]
    pipeline = [p for p in P.DEFAULT if p is not P.push_out_of_loops]  # the body keeps them

    def loop(h, xs, Wa, Wb, U):
        r = tn.scan(b, [h], [xs], [Wa, Wb, U])
        return [r.carries[0], r.ys[0]]

    g = tn.trace(loop, *arrays)
    run = tn.compile(g, passes=pipeline)
    assert any(n.op == "concat" for n in _scan_body(run).nodes)  # the case under test
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for _ in range(2):  # a second call with new invariants: the prologue runs again
        h, ys = run(*arrays)
        want_h, want_ys = numpy_loop(*arrays)
        np.testing.assert_allclose(h, want_h, rtol=tol, atol=tol)
        np.testing.assert_allclose(ys, want_ys, rtol=tol, atol=tol)
        arrays[2] = arrays[2] * 0.5


def _scan_body(compiled):
    (s,) = [n for n in compiled.graph.nodes if n.op == "scan"]
    return s.attrs["body"]


def test_a_packed_transposed_weight_is_made_in_the_prologue():
    """h @ W^T with W packed (numba, AVX-512 / AVX2): the transposed view is made once per
    loop call beside its pack, not per step (the numba step loops do not translate a
    transpose statement: a custom cell's reverse loop, dz @ W^T, ran its halves in Python)."""
    from tapernn.backends import numba_available
    from tapernn.backends.packed import available

    if not (numba_available() and available()):
        pytest.skip("no packed GEMM kernel here")
    B, H = 4, 256

    def step(h, x, w):
        h2 = tn.tanh(h @ tn.transpose(w) + x)
        return [h2, h2]

    b = tn.trace(step, np.zeros((B, H)), np.zeros((B, H)), np.zeros((H, H)))
    compiled = scan_run.compiled_body(b, None, tn.PlanOptions(backend="numba"), 2)
    ops = [n.op for n in compiled.graph.nodes]
    assert "packed_matmul" in ops and "transpose" not in ops
    assert "transpose" in [n.op for n in compiled.prologue.graph.nodes]
    rng = np.random.default_rng(3)
    h, xs, w = (
        rng.standard_normal((B, H)),
        rng.standard_normal((5, B, H)),
        rng.standard_normal((H, H)),
    )

    def loop(h, xs, w):
        r = tn.scan(b, [h], [xs], [w])
        return [r.carries[0], r.ys[0]]

    got = tn.compile(tn.trace(loop, h, xs, w), options=tn.PlanOptions(backend="numba"))(h, xs, w)
    want = []
    for x in xs:
        h = np.tanh(h @ w.T + x)
        want.append(h)
    np.testing.assert_allclose(got[0], h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], np.stack(want), rtol=1e-12, atol=1e-12)
