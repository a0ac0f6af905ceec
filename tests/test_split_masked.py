"""Masked loops (Sequencer lengths=) split their batch rows over two threads both ways on the
numba backend (hmask). Before: the forward ran unsplit every call -- its step writes several ys
([y | gates, masks] a step), so the input projection the planner computed into the slab lay
across both halves' rows (scan_split.SplitRunner._apart); the planner now leaves it out of the
slab where the loop may split (slab_halves.py) -- and the reverse loop's halves ran their Python
loops (their numba text called codegen's `np_empty`: NameError; step_selects.allocations).
Equivalence, float64 at 1e-12: the forward and final states to the NumPy equations with the
state held past a row's length (cell_reference.steps' mask), outputs past it exactly 0, every
output and gradient to the unrolled NumPy model (no loop, no slab); a two-ys scan placed both
ways to the reference interpreter. (numba: ~20 s of kernel compiles with an empty kernel cache.)"""

import numpy as np
import pytest
from cell_reference import fastlstm_step, gru_step, lstm_step
from test_batch_split import steps

import tapernn as tn
from tapernn import PlanOptions, nn
from tapernn.backends import numba_available, step_loop
from tapernn.scan_split import SplitRunner

T, B, D, H = 6, 16, 5, 256  # (two halves of 8 rows; every step weight packed: >= 65,536 elements)
LENGTHS = np.array([6, 3, 6, 5, 1, 6, 4, 6, 2, 6, 6, 5, 3, 6, 6, 4])
# per cell: (its class, its equations, its number of states)
CELLS = {
    "fastlstm": (nn.FastLSTM, fastlstm_step, 2),
    "gru": (nn.GRU, gru_step, 1),
    "lstm": (nn.LSTM, lstm_step, 2),
}
needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")


def _model(cell, unroll=False, **options):
    tn.manual_seed(1)
    m = nn.Sequencer(CELLS[cell][0](D, H), unroll=unroll)
    return m.set_plan_options(PlanOptions(own_threads="off", **options))


def _train(m, x, g):
    m.zero_grad_parameters()
    y, gx = np.array(m.forward(x, lengths=LENGTHS)), np.array(m.backward(x, g))
    return [y, gx] + [p.grad.copy() for p in m.parameters()]


def _check(m, cell, x, got, want):
    """got (m's) to the masked equations (outputs, final states) and to `want` (the unrolled
    NumPy model's outputs and gradients)."""
    _, step, n = CELLS[cell]
    params = {k: p.data for k, p in m.module.named_parameters().items()}
    mask = (np.arange(T)[:, None] < LENGTHS)[..., None].astype(float)
    ys, state = steps(step, params, x, tuple(np.zeros((B, H)) for _ in range(n)), mask)
    np.testing.assert_allclose(got[0], ys, rtol=0, atol=1e-12)
    for t, b in zip(*np.nonzero(np.arange(T)[:, None] >= LENGTHS)):
        assert np.all(got[0][t, b] == 0) and np.all(got[1][t, b] == 0), (t, b)
    hidden = m.module.get_hidden_state(-1)
    for h, s in zip(hidden if isinstance(hidden, tuple | list) else (hidden,), state):
        np.testing.assert_allclose(h, s, rtol=0, atol=1e-12)
    for k, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=str(k))


@needs_numba
@pytest.mark.usefixtures("packed_on", "numba_now")
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_masked_loop_splits_forward_and_backward(cell, rng, monkeypatch):
    ran, native = [], []  # per split call / per half's numba loop call: reverse or not
    halves, call = SplitRunner._halves, step_loop.StepLoop.__call__

    def counted(self, *args, **kw):
        ran.append(bool(self.attrs["reverse"]))
        return halves(self, *args, **kw)

    def counted_native(self, *args):
        native.append(self.reverse)
        return call(self, *args)

    monkeypatch.setattr(SplitRunner, "_halves", counted)
    monkeypatch.setattr(step_loop.StepLoop, "__call__", counted_native)
    split = _model(cell, backend="numba", layout="batch", batch_split="on")
    oracle = _model(cell, unroll=True, backend="numpy", layout="batch")
    for _ in range(3):  # (call 1 runs the full loops while the halves are made, then split)
        x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
        _check(split, cell, x, _train(split, x, g), _train(oracle, x, g))
    assert ran.count(False) >= 2 and ran.count(True) >= 2, ran  # (main: forward never)
    # each half one numba call, both ways, from the first split call (main: reverse never)
    assert native.count(False) >= 4 and native.count(True) >= 4, native
    lines = [loop.kernel for loop in split.compile_report().loops]
    assert all("batch split over 2 threads" in k for k in lines), lines
    assert not any("run unsplit" in k or "in Python" in k for k in lines), lines


@pytest.mark.parametrize("layout", ["batch", "feature"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("cell", ["fastlstm", "gru"])
def test_masked_loops_equal_the_equations_in_both_layouts(cell, backend, layout, rng):
    """Whatever is placed where (numba, batch_split "on": the projection out of the slab;
    "off" and NumPy: in it; xs_in_slab off: nowhere): the same numbers."""
    if backend == "numba" and not numba_available():
        pytest.skip("numba not installed")
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    want = _train(_model(cell, unroll=True, backend="numpy", layout=layout), x, g)
    for split, slab in (("on", True), ("off", True), ("on", False)):
        m = _model(cell, backend=backend, layout=layout, batch_split=split, xs_in_slab=slab)
        for _ in range(2):
            _check(m, cell, x, _train(m, x, g), want)


def _two_ys_program(Ts, Bs, D, W):
    """tn.scan over a GEMM's (T*B, W) result whose step writes two ys, (B, 2W) and (B, 3W): no
    place for the GEMM in the rows keeps the batch halves' rows apart (each ys is a block)."""

    def step(h, x, M):
        a = tn.tanh(tn.concat([x, x], axis=1) + h)
        return [a * M, a * 0.5, tn.concat([a, x * h[:, :W]], axis=1)]

    body = tn.trace(step, np.zeros((Bs, 2 * W)), np.zeros((Bs, W)), np.zeros((Bs, 1)))

    def f(x, Wx, h0, M):
        xs = tn.reshape(tn.reshape(x, (Ts * Bs, D)) @ Wx, (Ts, Bs, W))
        s = tn.scan(body, [h0], [xs], [M])
        return [s.ys[0], s.ys[1], s.carries[0]]

    rng = np.random.default_rng(5)
    arrays = [
        rng.standard_normal((Ts, Bs, D)),
        rng.standard_normal((D, W)),
        rng.standard_normal((Bs, 2 * W)),
        rng.standard_normal((Bs, 1)),
    ]
    return tn.trace(f, *arrays), arrays


@needs_numba
@pytest.mark.usefixtures("numba_now")
def test_the_planner_keeps_a_crossing_input_out_of_a_splitting_loops_slab():
    """batch_split "off" (or the NumPy backend): the GEMM goes into the loop's rows as before;
    "on" (the loop may run its halves at once; a body value over LOOP_MAX_SIZE): it keeps a
    buffer of its own. Every way the reference interpreter's numbers."""
    from tapernn.interpret import interpret

    g, arrays = _two_ys_program(4, 16, 5, 96)  # (ys rows of 16 x 480 elements a step)
    want = interpret(g, *arrays)
    placed = {}
    for backend, split in (("numba", "off"), ("numpy", "on"), ("numba", "on")):
        options = PlanOptions(layout="batch", backend=backend, batch_split=split)
        compiled = tn.compile(g, options=options)
        placed[backend, split] = [m.op for m in compiled.program.plan.placed]
        for _ in range(3):
            for got, w in zip(compiled(*arrays), want):
                np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
    assert placed == {
        ("numba", "off"): ["matmul"],
        ("numpy", "on"): ["matmul"],
        ("numba", "on"): [],
    }
