"""Lowering the scan op (tapernn/scan_run.py): compiled == the reference interpreter to 1e-12,
the body compiled once per body Graph (not per length), failures name the step, the existing
passes and the memory plan keep a graph with scan nodes intact, and the loop report."""

import numpy as np
import pytest
from pass_check import assert_same
from scan_bodies import (
    gru_body,
    lstm_arrays,
    lstm_body,
    lstm_numpy,
    random_arrays,
    random_body,
    rnn_body,
    scanned,
)

import tapernn as tn
from tapernn import passes as P
from tapernn.interpret import interpret
from tapernn.scan_run import COMPILES


def _check(g, arrays, **kw):
    want = interpret(g, *arrays)
    for c in (tn.compile(g, **kw), tn.compile(g, unroll=True, **kw)):
        got = c(*arrays)
        got = got if isinstance(got, list) else [got]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_compiled_lstm_and_gru_scans_equal_the_interpreter(reverse):
    rng = np.random.default_rng(0)
    arrays = lstm_arrays(rng, 6, 3, 4, 5)
    _check(tn.trace(scanned(lstm_body(3, 4, 5), 2, 1, reverse=reverse), *arrays), arrays)
    garr = [rng.standard_normal(s) for s in [(3, 5), (6, 3, 4), (4, 15), (5, 10), (5, 5)]]
    _check(tn.trace(scanned(gru_body(3, 4, 5), 1, 1, reverse=reverse), *garr), garr)


def test_random_bodies_compiled_equal_the_interpreter():
    rng = np.random.default_rng(5)
    for _ in range(5):
        body, _ops = random_body(rng)
        arrays = random_arrays(rng, 4)
        g = tn.trace(scanned(body, 1, 1, reverse=bool(rng.integers(2))), *arrays)
        assert_same(g, P.DEFAULT, arrays)
        _check(g, arrays)


def test_the_body_is_compiled_once_for_every_length_and_node():
    body = rnn_body(2, 3, 4)
    rng = np.random.default_rng(1)
    before = COMPILES[0]
    for T in (3, 7, 50):
        arrays = [rng.standard_normal(s) for s in [(2, 4), (T, 2, 3), (3, 4), (4, 4), (4,)]]
        g = tn.trace(
            lambda h, x, W, U, b: (
                tn.scan(body, [h], [x], [W, U, b]).ys + tn.scan(body, [h * 2.0], [x], [W, U, b]).ys
            ),
            *arrays,
        )
        _check(g, arrays)  # rolled (the unrolled compile has no scan)
    assert COMPILES[0] - before == 1


def test_a_failing_step_names_the_step_and_the_body_node():
    body = tn.trace(
        lambda h, ids, w: [h + tn.embedding(w, ids), h],
        np.zeros((2, 3)),
        np.zeros(2, np.int64),
        np.zeros((4, 3)),
    )
    g = tn.trace(
        lambda h, ids, w: tn.scan(body, [h], [ids], [w]).carries,
        np.zeros((2, 3)),
        np.zeros((3, 2), np.int64),
        np.zeros((4, 3)),
    )
    ids = np.array([[0, 1], [2, 3], [9, 0]])
    with pytest.raises(tn.TapernnError, match="scan step 2 of 3: embedding"):
        tn.compile(g)(np.zeros((2, 3)), ids, np.ones((4, 3)))


def test_existing_passes_leave_scan_nodes_intact():
    """CSE merges equal scans only, DCE drops a dead one, folding evaluates one over
    constants, zeros never look inside; the plan writes the slab into a planned buffer."""
    rng = np.random.default_rng(2)
    arrays = lstm_arrays(rng, 4, 2, 3, 4)
    body = lstm_body(2, 3, 4)

    def fn(h, c, x, W, U, b):
        a = tn.scan(body, [h, c], [x], [W, U, b])
        same = tn.scan(body, [h, c], [x], [W, U, b])
        other = tn.scan(body, [h * 0.0, c], [x], [W, U, b], reverse=True)
        tn.scan(body, [h, c], [x * 2.0], [W, U, b])  # dead
        const = tn.scan(body, [tn.zeros((2, 4)), tn.ones((2, 4))], [x], [W, U, b])
        return [a.ys[0] + same.ys[0], other.carries[1] * 2.0, const.ys[1] + a.carries[0]]

    g = tn.trace(fn, *arrays)
    assert g.op_counts()["scan"] == 5
    out = assert_same(g, P.DEFAULT, arrays)
    assert out.op_counts()["scan"] == 3  # CSE merged `same`, DCE dropped the dead one
    _check(g, arrays)
    for passes in (
        [P.fold_constants],
        [P.propagate_zeros],
        [P.hoist_across_time],
        [P.eliminate_common_subexpressions],
    ):
        assert_same(g, passes, arrays)


def test_the_loop_report_states_bytes_per_step_and_per_sequence():
    rng = np.random.default_rng(3)
    arrays = lstm_arrays(rng, 5, 2, 3, 4)
    c = tn.compile(tn.trace(scanned(lstm_body(2, 3, 4), 2, 1), *arrays))
    (loop,) = c.report.loops
    assert loop.length == 5 and not loop.reverse
    assert loop.step_bytes == 2 * (2 * 4) * 8 and loop.carry_bytes == 2 * 8 * 8
    assert loop.body.kernels > 0 and loop.body.passes[0].name == "eliminate_dead_code"
    assert loop.bytes_per_sequence(1000) == loop.fixed_bytes + 1000 * loop.step_bytes
    assert "T x 128 per step" in str(c.report)
    np.testing.assert_allclose(c(*arrays)[2], lstm_numpy(*arrays)[2], atol=1e-12)


def test_the_outer_program_picks_blas_threads_for_the_body_gemms():
    body = rnn_body(64, 8, 512)
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal(s) for s in [(64, 512), (3, 64, 8), (8, 512), (512, 512), (512,)]]
    c = tn.compile(tn.trace(scanned(body, 1, 1), *arrays), passes=[])
    assert "matmul" not in c.graph.op_counts()
    assert c.largest_gemm_flops == 2.0 * 64 * 512 * 512  # h @ U inside the loop


def test_a_slab_planned_into_a_concat_slot_or_a_strided_region():
    body = rnn_body(2, 3, 4)
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(s) for s in [(2, 4), (5, 2, 3), (3, 4), (4, 4), (4,)]]

    def fn(h, x, W, U, b):
        slab = tn.scan(body, [h], [x], [W, U, b]).slab
        flat = tn.concat([slab * 1.0, tn.reshape(x, (-1,)), slab])
        wide = tn.concat(
            [
                tn.reshape(tn.scan(body, [h * 2.0], [x], [W, U, b]).slab, (6, 8)),
                tn.reshape(h, (1, 8)).__rmul__(1.0) + tn.zeros((6, 8)),
            ],
            axis=1,
        )
        return [flat, wide]

    g = tn.trace(fn, *arrays)
    from plan_check import ANY_SIZE

    for options in (ANY_SIZE, tn.PlanOptions()):
        got = tn.compile(g, options=options)(*arrays)
        for a, b in zip(got, interpret(g, *arrays)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_body_nothing_uses_any_more_is_freed_with_its_program():
    import gc
    import weakref

    body = tn.trace(lambda h, x: [h + x], np.zeros(2), np.zeros(2))
    g = tn.trace(
        lambda h, xs, body=body: tn.scan(body, [h], [xs]).carries, np.zeros(2), np.zeros((3, 2))
    )
    np.testing.assert_allclose(tn.compile(g, passes=[])(np.ones(2), np.ones((3, 2)))[0], [4.0, 4.0])
    alive = weakref.ref(body)
    del body, g
    gc.collect()
    assert alive() is None


def _awkward_body(B, H):
    """ys: the new carry (also returned as a carry), the same node twice, a view of it, the
    xs slice itself, an invariant, a concat of two computed pieces, a value computed in place
    over a temporary, a 0-d value."""

    def step(h, x, U, W):
        a = x @ W
        h2 = tn.tanh(a + h @ U)
        e = tn.exp(-(h2 * h2))
        cat = tn.concat([h2 * 2.0, a - 1.0], axis=1)
        return [h2, h2, h2, h2.reshape((H * B,)), x, U, cat, e, tn.sum(e)]

    z = np.zeros
    return tn.trace(step, z((B, H)), z((B, H)), z((H, H)), z((H, H)), names=["h", "x", "U", "W"])


def _awkward_numpy(h, xs, U, W, reverse):
    T, B, H = xs.shape
    out = [np.empty((T, B, H)), np.empty((T, B, H)), np.empty((T, B * H)), np.empty((T, B, H))]
    out += [np.empty((T, H, H)), np.empty((T, B, 2 * H)), np.empty((T, B, H)), np.empty(T)]
    for t in range(T - 1, -1, -1) if reverse else range(T):
        a = xs[t] @ W
        h = np.tanh(a + h @ U)
        vals = [h, h, h.reshape(-1), xs[t], U, np.concatenate([h * 2.0, a - 1.0], 1)]
        for o, v in zip(out, vals + [np.exp(-(h * h)), np.exp(-(h * h)).sum()]):
            o[t] = v
    return [h, *out]


@pytest.mark.parametrize("reverse", [False, True])
def test_the_body_computes_its_ys_into_the_slab_rows(reverse):
    """The body program writes each ys into its row of the slab (given as arrays after its
    inputs), or copies it there when its storage is not its own (an input, a view, the same
    node twice); the runner copies no rows. Values == a NumPy loop and the interpreter."""
    B, H, T = 2, 3, 5
    body = _awkward_body(B, H)
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s) for s in [(B, H), (T, B, H), (H, H), (H, H)]]

    def loop(h, xs, U, W):
        r = tn.scan(body, [h], [xs], [U, W], reverse=reverse)
        return [r.carries[0], *r.ys]

    g = tn.trace(loop, *arrays)
    c = tn.compile(g, backend="numpy")  # (the Python loop's runner; numba runs a kernel)
    want = _awkward_numpy(*arrays, reverse)
    for _ in range(2):  # a second call: fresh rows, nothing kept from the first
        got = c(*arrays)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    _check(g, arrays)
    (runner,) = [v for k, v in c.program.fn.__kwdefaults__.items() if k.startswith("scan_run")]
    source = runner.source
    assert "[_t] =" not in source and "_fn(" not in source, source  # no row copies, no call
    n_ys = len(body.outputs) - 1
    (header,) = [line for line in source.splitlines() if "for _t" in line]
    assert all(f"w{j}," in header and f"_Y{j}" in header for j in range(n_ys))  # rows, given
    assert "out=w" in source and "[...] = " in source  # computed there, or copied
