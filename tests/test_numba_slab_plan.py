"""The numba loop kernel on the shared slab plan (issue 16): the rolled forward's input
projection computed into its loop's gate rows (PlanOptions.xs_in_slab) and the backward's dZ
over the consumed gate rows of the saved forward slab (PlanOptions.dz_in_gates) are written
over by the kernel itself (numba_loop.kernel_runner: scan_run.writable_over_xs's row check and
LoopKernel.reads_xs_first), not through a slab of its own. Whole-program kernels are switched
off so the loop kernels run inside the NumPy programs, at the shapes tests/test_dz_in_gates.py
compiles (no new kernel sources but the aliasing body's). Values and gradients in float64 at
1e-12 against the NumPy backend, unroll=True and the NumPy equations."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import PlanOptions, nn, scan_ir, scan_run
from tapernn.backends import numba_available, numba_loop, numba_program
from tapernn.interpret import interpret
from tests import cell_reference as ref
from tests.test_dz_in_gates import B, H, T, _data, _pair, _run, _same

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
NUMBA = PlanOptions(backend="numba", dz_in_gates=True)
NUMPY = PlanOptions(backend="numpy", dz_in_gates=True)


@pytest.fixture(autouse=True)
def loop_kernels_alone(monkeypatch):
    monkeypatch.setattr(numba_program, "ENABLED", [False])


def _loops(compiled):
    """(switch, report) of each loop of a program."""
    return [(sw, rep) for _, _, sw, rep in compiled.program.bodies.values()]


def _record_over(seq, seen):
    """Wrap the `over` check of every loop kernel runner of seq's last pair: its answers
    go to `seen` (program name -> list of bools)."""
    pair = _pair(seq)
    for name, c in (("forward", pair.forward), ("backward", pair.backward)):
        for sw, rep in _loops(c):
            assert "numba loop kernel" in rep.kernel, rep.kernel
            kw = sw.fn.__kwdefaults__
            if kw.get("over") is None:
                continue
            check = kw["over"]

            def over(out, *xs, check=check, name=name):
                seen.setdefault(name, []).append(check(out, *xs))
                return seen[name][-1]

            kw["over"] = over


@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM", "GRU"])
def test_values_and_gradients_equal_the_numpy_backend_and_unrolled(cell):
    """The loop kernels with the donation: one chunk and three remembered chunks, lengths=,
    need_grad_input=False; the same as the NumPy backend's rolled program and unroll=True."""
    for kw in ({}, {"chunks": 3}, {"lengths": True}, {"grad_input": False}):
        seq, got = _run(cell, NUMBA, **kw)
        assert all(
            "numba loop kernel" in rep.kernel
            for c in (_pair(seq).forward, _pair(seq).last_backward)
            for _, rep in _loops(c)
        )
        _same(got, _run(cell, NUMPY, **kw)[1])
        _same(got, _run(cell, PlanOptions(backend="numpy"), unroll=True, **kw)[1])
        # (lengths=: the mask's reads, no donation, as on the NumPy backend)
        donated = bool(_pair(seq).backward.program.plan.donated)
        assert donated or "lengths" in kw  # (GRU too since hpeak6: its rows line up)
        assert donated == bool(_pair(_run(cell, NUMPY, **kw)[0]).backward.program.plan.donated)


@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM"])
def test_the_kernels_write_over_the_rows_and_equal_the_numpy_equations(cell):
    """The forward kernel writes its slab over the projection in its rows and the backward
    kernel over the saved gate rows (their runners' checks answered True: no slab of their
    own); outputs equal the NumPy equations over two rounds (the second forward after a
    backward that overwrote the gates), gradients their complex-step derivatives."""
    x, g = _data()
    m = {"FastLSTM": lambda: nn.FastLSTM(H, H), "LSTM": lambda: nn.LSTM(H, H)}[cell]()
    step = {"FastLSTM": ref.fastlstm_step, "LSTM": ref.lstm_step}[cell]
    params = {k: p.data.copy() for k, p in m.named_parameters().items()}
    want, _ = ref.run(step, params, x, 2, H)
    grads = ref.complex_step_grads(step, params, x, 2, H, g)
    seq = nn.Sequencer(m).set_plan_options(NUMBA)
    seen: dict = {}
    for k in range(2):
        seq.zero_grad_parameters()
        np.testing.assert_allclose(seq.forward(x), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(seq.backward(x, g), grads["input"], rtol=1e-10, atol=1e-12)
        for name, p in m.named_parameters().items():
            np.testing.assert_allclose(p.grad, grads[name], rtol=1e-10, atol=1e-12)
        if k == 0:
            assert _pair(seq).backward.program.plan.donated
            _record_over(seq, seen)
    assert seen == {"forward": [True], "backward": [True]}


def test_a_second_backward_of_one_forward_gives_the_same_gradients():
    x, g = _data()
    seq = nn.Sequencer(nn.FastLSTM(H, H)).set_plan_options(NUMBA)
    seq.zero_grad_parameters()
    out = np.array(seq.forward(x))
    gx1 = np.array(seq.backward(x, g))
    once = [p.grad.copy() for p in seq.parameters()]
    gx2 = np.array(seq.backward(x, g))
    np.testing.assert_allclose(gx2, gx1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(seq.output, out, rtol=0, atol=0)
    for p, o in zip(seq.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * o, rtol=1e-12, atol=1e-14)


def _reversed_program(Ts=200, Bs=3, D=6):
    """A loop over a GEMM's result (placed in the loop's rows) whose body returns a reversed
    view of its xs row as its ys: written element by element over that same row, it reads
    elements it has already overwritten."""

    def step(h, x):
        y = x[:, ::-1]
        return [h + tn.tanh(x), y]

    body = tn.trace(step, np.zeros((Bs, 8)), np.zeros((Bs, 8)))

    def f(x, W, h0):
        xs = tn.reshape(tn.reshape(x, (Ts * Bs, D)) @ W, (Ts, Bs, 8))
        s = tn.scan(body, [h0], [xs])
        return [s.ys[0], s.carries[0]]

    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((Ts, Bs, D)), rng.standard_normal((D, 8)), np.zeros((Bs, 8))]
    return tn.trace(f, *arrays), arrays


def test_a_kernel_returning_a_view_of_its_xs_writes_a_slab_of_its_own(monkeypatch):
    """LoopKernel.reads_xs_first is False for a body returning a view of its xs, so the
    runner does not write over them (and equals the reference interpreter); forced True, the
    kernel writes over its xs rows and the numbers are wrong: the guard is what keeps them
    right."""
    g, arrays = _reversed_program()
    want = interpret(g, *arrays)
    options = PlanOptions(backend="numba", regions=True)
    compiled = tn.compile(g, options=options)
    assert compiled.program.plan.slab_roots
    ((sw, rep),) = _loops(compiled)
    assert "numba loop kernel" in rep.kernel and not sw.handle.reads_xs_first
    for _ in range(3):
        for got, w in zip(compiled(*arrays), want):
            np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(sw.handle, "reads_xs_first", True)
    forced = tn.compile(g, options=options)
    ((fsw, _),) = _loops(forced)
    assert fsw.handle is sw.handle
    wrong = forced(*arrays)
    assert not np.allclose(wrong[0], want[0])


def test_xs_read_first_of_the_built_in_cells_kernels():
    """The built-in cells' loop kernels (every value computed into a workspace buffer) read
    their xs first; a body whose carry is its xs row does not."""
    seq, _ = _run("FastLSTM", NUMBA)
    pair = _pair(seq)
    for c in (pair.forward, pair.backward):
        ((sw, _),) = _loops(c)
        assert sw.handle.reads_xs_first
    body = tn.trace(lambda h, x: [x, h * x], np.zeros((B, 4)), np.zeros((B, 4)))
    attrs = {"n_carry": 1, "n_xs": 1, "body": body, "length": T, "reverse": False}
    compiled = scan_run.compiled_body(body, None, PlanOptions(backend="numpy"), 2, (1,))
    handle, why = numba_loop.plan(compiled, attrs, [])
    assert handle is not None, why
    assert not handle.reads_xs_first


def test_the_kernel_runners_remembered_check_answers_as_the_full_one():
    """writable_over_xs(memo=True) (the kernel runner's): for each layout key (per xs: a view
    of the slab's owner or not, its shape and strides) the full check's answer, computed the
    first time the key is seen: aligned rows yes, reversed rows and a misaligned fresh
    layout no, an xs elsewhere yes."""
    seq, _ = _run("FastLSTM", NUMBA)
    (loop,) = _pair(seq).forward.program.plan.slab_roots
    _, start, row, length = scan_ir.scan_rows_of(loop.attrs)
    dtype = np.dtype(np.float64)

    def layouts():
        slab = np.empty(loop.shape, dtype)
        rows = slab[start : start + length * row].reshape(length, B, 4 * H)
        shifted = slab[start + row : start + (length + 1) * row].reshape(length, B, 4 * H)
        return slab, rows, shifted

    for memo in (False, True):
        over = scan_run.writable_over_xs(loop.attrs, dtype, True, memo=memo)
        for _ in range(2):  # (the second time from the remembered answers)
            slab, rows, _ = layouts()
            assert over(slab, rows)
            assert not over(slab, rows[::-1])
            assert over(slab, np.empty((length, B, 4 * H)))
        fresh = scan_run.writable_over_xs(loop.attrs, dtype, True, memo=memo)
        slab, _, shifted = layouts()
        assert not fresh(slab, shifted) and not fresh(slab, shifted)
    assert not scan_run.writable_over_xs(loop.attrs, dtype, False, memo=True)(*layouts()[:2])
