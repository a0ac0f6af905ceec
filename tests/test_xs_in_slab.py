"""PlanOptions.xs_in_slab (issue 16): a rolled forward's time-batched input projection is
computed straight into the gate rows of its loop's own slab (no buffer of its own), each step's
row read before the step's gates overwrite it. Structure (the projection placed in the scan's
result, the arena without it, the runner's mode) and equivalence: values and gradients equal
to the same program without the placement, to unroll=True and to NumPy equations, in float64
at 1e-12, on both backends."""

import sys

import numpy as np
import pytest

import tapernn as tn
from tapernn import PlanOptions, nn, scan_ir, scan_run
from tapernn.interpret import interpret
from tapernn.nn.runtime import runtime_of
from tests import cell_reference as ref

H, T, B = 8, 6, 3
CELLS = {
    "FastLSTM": lambda: nn.FastLSTM(H, H),
    "LSTM": lambda: nn.LSTM(H, H),
    "LSTM(peephole=False)": lambda: nn.LSTM(H, H, peephole=False),
    "GRU": lambda: nn.GRU(H, H),
}
# small thresholds: the per-gate bias adds of LSTM written in place over their column blocks
# of the projection at this size too (production does so from H = 256 on)
STRIDED = {"strided_min_bytes": 0, "strided_min_run": 1, "escaping_min_run": 1}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))


def _run(cell, options, unroll=False, chunks=1):
    """Outputs, input gradients and parameter gradients of one Sequencer over `chunks`
    forward/backward calls (remember="both": the state carried across chunks)."""
    tn.manual_seed(7)
    seq = nn.Sequencer(CELLS[cell](), unroll=unroll)
    if chunks > 1:
        seq.remember("both")
    seq.set_plan_options(options)
    seq.zero_grad_parameters()
    outs = []
    for k in range(chunks):
        x, g = _data(k)
        y = np.array(seq.forward(x))
        gx = np.array(seq.backward(x, g))
        outs += [y, gx]
    return seq, outs + [p.grad.copy() for p in seq.parameters()]


def _forward_program(seq):
    return runtime_of(seq).history[-1].exe.compile_training().forward


def _same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("cell", list(CELLS))
def test_rolled_values_and_gradients_with_and_without_the_placement(cell, strided, backend):
    extra = STRIDED if strided else {}
    on = PlanOptions(backend=backend, **extra)
    off = PlanOptions(backend=backend, xs_in_slab=False, **extra)
    for chunks in (1, 3):  # (3: the state remembered across chunks)
        _, got = _run(cell, on, chunks=chunks)
        _, plain = _run(cell, off, chunks=chunks)
        _, unrolled = _run(cell, off, unroll=True, chunks=chunks)
        _same(got, plain)
        _same(got, unrolled)


@pytest.mark.parametrize("strided", [False, True])
def test_fastlstm_and_lstm_equal_the_numpy_equations(strided):
    x, _ = _data()
    for cell, step in (("FastLSTM", ref.fastlstm_step), ("LSTM", ref.lstm_step)):
        m = CELLS[cell]()
        want = ref.run(step, {k: p.data.copy() for k, p in m.named_parameters().items()}, x, 2, H)
        seq = nn.Sequencer(m).set_plan_options(PlanOptions(**(STRIDED if strided else {})))
        np.testing.assert_allclose(seq.forward(x), want[0], rtol=1e-12, atol=1e-12)
        assert _forward_program(seq).program.plan.slab_roots


@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM"])
def test_the_projection_is_planned_into_the_loops_own_rows(cell, monkeypatch):
    """Structure: the forward's projection GEMM is placed into the scan's result (which is
    allocated before it), the program has no buffer of the projection's size, and the loop's
    runner checks the rows it is handed (and, for LSTM, whose body reads a gate's input after
    writing other gates, hands the body copies of the step's rows)."""
    monkeypatch.setattr(sys.modules[__name__], "H", 128)  # (LSTM's four gate xs not merged)
    monkeypatch.setattr(sys.modules[__name__], "B", 8)
    seq, _ = _run(cell, PlanOptions(**STRIDED))
    fwd = _forward_program(seq)
    plan = fwd.program.plan
    (loop,) = plan.slab_roots
    assert loop.op == "scan"
    placed = [q for q, (r, _) in plan.placed.items() if r is loop]
    assert [q.op for q in placed] == ["matmul"]
    (m,) = placed
    assert m.size == T * B * 4 * H
    assert m not in plan.buffer_of and plan.storage[m] is loop
    assert plan.alloc_at[loop] == plan.schedule.index(m) < plan.schedule.index(loop)
    runner = fwd.program.source
    assert "np_empty" in runner and "out=v" in runner
    loop_source = next(
        v.source for v in fwd.program.fn.__kwdefaults__.values() if hasattr(v, "source")
    )
    assert "_over(out, " in loop_source
    # (LSTM's body, with its bias adds in place, writes a gate row before reading the last xs)
    assert ("_P0[...] = " in loop_source) == (cell == "LSTM")

    plain = _forward_program(_run(cell, PlanOptions(xs_in_slab=False, **STRIDED))[0])
    assert any(size == m.size for size, _ in plain.program.plan.buffers)
    assert plan.buffer_bytes + m.nbytes <= plain.program.plan.buffer_bytes


def test_a_body_that_reads_its_xs_late_gets_copies_of_the_rows(monkeypatch):
    """A body read as writing its ys rows before reading its xs ("late") is handed copies of
    the step's xs rows (the runner's `_P` buffers): the same numbers as without the placement."""
    monkeypatch.setattr(sys.modules[__name__], "H", 128)
    monkeypatch.setattr(sys.modules[__name__], "B", 8)
    _, plain = _run("LSTM", PlanOptions(xs_in_slab=False, **STRIDED))
    monkeypatch.setattr(scan_run, "reads_xs_first", lambda *a: "late")
    seq, late = _run("LSTM", PlanOptions(**STRIDED))
    runner = next(
        v.source
        for v in _forward_program(seq).program.fn.__kwdefaults__.values()
        if hasattr(v, "source")
    )
    assert "_P0[...] = " in runner
    _same(late, plain)


def test_misaligned_rows_get_a_slab_of_their_own():
    """The runner's check: an xs lying in `out` other than row t in row t makes the loop
    write a slab of its own (copied into `out` after)."""
    seq, _ = _run("FastLSTM", PlanOptions())
    fwd = _forward_program(seq)
    (loop,) = fwd.program.plan.slab_roots
    over = scan_run.writable_over_xs(loop.attrs, np.dtype(np.float64), True)
    _, start, row, length = scan_ir.scan_rows_of(loop.attrs)
    slab = np.empty(loop.shape, np.float64)
    rows = slab[start : start + length * row].reshape(length, B, 4 * H)
    assert over(slab, rows)  # row t in row t
    assert over(slab, np.empty((length, B, 4 * H)))  # elsewhere
    assert not over(slab, rows[::-1])  # reversed: row t in row length - 1 - t
    shifted = slab[start + row : start + (length + 1) * row].reshape(length, B, 4 * H)
    assert not over(slab, shifted)
    assert not scan_run.writable_over_xs(loop.attrs, np.dtype(np.float64), False)(slab, rows)


def test_a_second_backward_of_one_forward_gives_the_same_gradients():
    x, g = _data()
    seq = nn.Sequencer(nn.FastLSTM(H, H))
    seq.zero_grad_parameters()
    seq.forward(x)
    gx1 = np.array(seq.backward(x, g))
    once = [p.grad.copy() for p in seq.parameters()]
    gx2 = np.array(seq.backward(x, g))
    np.testing.assert_allclose(gx2, gx1, rtol=1e-12, atol=1e-14)
    for p, o in zip(seq.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * o, rtol=1e-12, atol=1e-14)


def _swap_body(Bs):
    """A body that writes the first half of its ys row from the second half of its xs row
    before it reads the first half (a "late" reader of its xs)."""

    def step(h, x, M):
        y = tn.concat([x[:, 4:] * h[:, :4] + M, tn.tanh(x[:, :4] + h[:, 4:])], axis=1)
        return [h + y, y]

    return tn.trace(step, np.zeros((Bs, 8)), np.zeros((Bs, 8)), np.zeros((Bs, 4)))


def _swap_program(Ts, Bs, D):
    body = _swap_body(Bs)

    def f(x, W, h0, M):
        xs = tn.reshape(tn.reshape(x, (Ts * Bs, D)) @ W, (Ts, Bs, 8))
        s = tn.scan(body, [h0], [xs], [M])
        return [s.ys[0], s.carries[0]]

    rng = np.random.default_rng(3)
    arrays = [
        rng.standard_normal((Ts, Bs, D)),
        rng.standard_normal((D, 8)),
        np.zeros((Bs, 8)),
        rng.standard_normal((Bs, 4)),
    ]
    return tn.trace(f, *arrays), arrays


def test_a_late_reading_body_equals_the_interpreter_and_needs_the_copies(monkeypatch):
    """tn.scan over a GEMM's result, with a body that overwrites part of its xs row before it
    reads it: the GEMM is placed into the loop's rows, the runner copies the xs rows (`late`)
    and the result equals the reference interpreter; run as if the body read its xs first,
    it does not (the guard is what keeps it right). The numba backend the same."""
    g, arrays = _swap_program(5, 3, 6)
    want = interpret(g, *arrays)
    # (the body's GEMM into its strided slot of the ys row; the NumPy backend's Python runner,
    # whatever $TAPERNN_TEST_BACKEND says: the forced-wrong run below patches that runner)
    options = PlanOptions(backend="numpy", **STRIDED)
    compiled = tn.compile(g, options=options)
    assert compiled.program.plan.slab_roots
    for got, w in zip(compiled(*arrays), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
    # numba: a whole-program kernel (T = 5); the numba loop kernel in a NumPy program (T = 200:
    # values over numba_loop.MAX_SIZE), which writes a slab of its own (the Python loop first)
    for Ts in (5, 200):
        gn, an = _swap_program(Ts, 3, 6)
        want_n = interpret(gn, *an)
        numba = tn.compile(gn, options=PlanOptions(backend="numba", **STRIDED))
        for _ in range(3):
            for got, w in zip(numba(*an), want_n):
                np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
        assert ("loop kernel" in numba.report.loops[0].kernel) == (Ts == 200)
    monkeypatch.setattr(scan_run, "reads_xs_first", lambda *a: "first")
    wrong = tn.compile(g, options=options)(*arrays)
    assert not np.allclose(wrong[0], want[0])
