"""The forward's transposed copy of a loop weight made in that weight's zeroed `.grad` (issue 19,
hpeak8): a TrainingPair forward copies a transposed recurrent weight C-contiguous once per call
(passes/loop_operands.py, arena.per_call); codegen gives that copy a slot (Program.scratch_slots)
and the runtime lends it the weight's `.grad` when that holds only zeros (Packing.scratch_into),
zeroing it again after the call (release_scratch). Structure (the slot, the lent array, zeros
after), equivalence (float64, 1e-12: against the same model with the scratch off and the NumPy
equations, on both call paths and both backends), accumulation without zeroing (no scratch),
and the report's model of the loop peak (tracemalloc)."""

import numpy as np
import pytest
from lend_check import data, seeded

from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.nn.packing import Packing
from tapernn.nn.runtime import runtime_of
from tapernn.nn.training_pair import per_call_peak
from tests import cell_reference as ref

T, B, H = 4, 8, 128  # (the recurrent weight 4H x H = 65,536 elements: copied per call)


CELLS = {"FastLSTM": lambda: nn.FastLSTM(H, H), "LSTM": lambda: nn.LSTM(H, H, peephole=False)}


def _model(seed=0, cell="FastLSTM"):
    return seeded(CELLS[cell], seed)


def _data(seed):
    return data((T, B, H), seed)


@pytest.fixture
def lent(monkeypatch):
    """The `.grad` arrays each forward was lent (Packing.scratch_into), and whether they held
    zeros again once it returned."""
    record = []
    real = Packing.release_scratch

    def spy(program, used, ended=False):
        real(program, used, ended)
        record.append([(u, not u.any()) for u in used])

    monkeypatch.setattr(Packing, "release_scratch", staticmethod(spy))
    return record


def _scratch_off(monkeypatch):
    monkeypatch.setattr(Packing, "scratch_into", lambda self, program, args: [])


def _run(backend, rounds=3, zero=True, cell="FastLSTM"):
    m = _model(cell=cell)
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(backend=backend, layout="batch"))
    got = []
    for k in range(rounds):
        x, g = _data(k)
        if zero:
            seq.zero_grad_parameters()
        out = np.array(seq.forward(x))
        gi = np.array(seq.backward(x, g))
        got.append(
            [out, gi]
            + [p.grad.copy() for p in m.parameters()]
            + [np.array(s) for s in m.get_grad_hidden_state(1)]
        )
        seq.update_parameters(0.1)
    return seq, m, got


def test_the_forward_lends_the_zeroed_grad_and_zeroes_it_again(lent):
    seq, m, _ = _run("numpy")
    fwd = runtime_of(seq).last.training_pair.forward
    slots = fwd.program.scratch_slots
    assert len(slots) == 1
    ((_, node, rows),) = slots.values()
    assert rows is None
    assert node.op == "transpose_copy" and node.shape == (H, 4 * H)
    assert len(lent) == 3  # general path, then the steady one
    for used in lent:
        assert [u is m.o2g.weight.grad for u, _ in used] == [True]
        assert all(zero for _, zero in used)
    assert fwd.program.dest == [None]


def test_a_block_lends_the_rows_of_its_grad(lent):
    """LSTM(peephole=False), D = H: its eight weights are one block (8H, H); the loop weight is
    rows 4H:8H of it, and those rows of the block's `.grad` are lent."""
    seq, m, _ = _run("numpy", cell="LSTM")
    fwd = runtime_of(seq).last.training_pair.forward
    ((_, node, rows),) = fwd.program.scratch_slots.values()
    assert rows == (4 * H, 8 * H) and node.shape == (H, 4 * H)
    block = m.w_hi._block.grad
    for used in lent:
        ((u, zero),) = used
        assert zero and u.base is block and np.shares_memory(u, block[4 * H :])


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_values_and_gradients_equal_the_scratch_off_run_and_numpy(backend, cell, monkeypatch):
    """Outputs (against the NumPy equations), the input gradient, every parameter gradient and
    get_grad_hidden_state over three zeroed loop steps with updates: the same as with the scratch
    off, at 1e-12."""
    on = _run(backend, cell=cell)[2]
    with monkeypatch.context() as mp:
        _scratch_off(mp)
        _, _, off = _run(backend, cell=cell)
    for a, b in zip(on, off):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    m0 = _model(cell=cell)
    params = {name: p.data.copy() for name, p in m0.named_parameters().items()}
    step = ref.fastlstm_step
    if cell == "LSTM":
        step = lambda p, x, h, c: ref.lstm_step(p, x, h, c, peephole=False)
    want, _ = ref.run(step, params, _data(0)[0], 2, H)
    np.testing.assert_allclose(on[0][0], want, rtol=1e-12, atol=1e-12)


def test_gradients_accumulated_without_zeroing_are_not_used_as_scratch(lent, monkeypatch):
    """Two backwards per round, no zeroing between rounds (Torch7 accumulates): a `.grad` that
    is not all zeros is never lent, and the sums equal those with the scratch off."""
    _, _, on = _run("numpy", zero=False)
    assert lent[0] and not any(lent[1:])  # (only the first forward found zeros)
    with monkeypatch.context() as mp:
        _scratch_off(mp)
        _, _, off = _run("numpy", zero=False)
    for a, b in zip(on, off):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


def test_a_grad_sharing_memory_with_an_argument_is_not_lent(lent):
    """A `.grad` that shares memory with an argument (here the input, a view of it) is not
    lent."""
    m = _model()
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(backend="numpy", layout="batch"))
    seq.zero_grad_parameters()
    x = m.o2g.weight.grad.reshape(-1)[: T * B * H].reshape(T, B, H)  # zeros, in the .grad
    seq.forward(x)
    assert not any(lent)
    seq.forward(np.zeros((T, B, H)))  # (the same zeros apart from it: lent)
    assert [[u is m.o2g.weight.grad for u, _ in used] for used in lent if used] == [[True]]


def test_the_report_counts_no_copy_and_stays_within_10_percent_of_the_loop_peak():
    """float32 (T, B, H) = (8, 16, 128): the forward's per-call peak without the lent copy is
    smaller (by at most its bytes); the loop's tracemalloc peak and the report agree within 10 %."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, H)).astype(np.float32)
    g = rng.standard_normal((8, 16, H)).astype(np.float32)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype("float32")
    seq.set_plan_options(PlanOptions(backend="numpy", layout="batch"))
    real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
    report = seq.compile_report().peak_bytes
    assert abs(real - report) <= 0.1 * report, (real, report)
    fwd = runtime_of(seq).last.training_pair.forward
    ((_, node, _),) = fwd.program.scratch_slots.values()
    assert 0 < per_call_peak(fwd) - per_call_peak(fwd, scratch=True) <= node.nbytes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zeros_sees_one_nonzero_anywhere_as_any_does(dtype):
    """packing._zeros (the head first, then the rest) answers what `not a.any()` answers: one
    nonzero (NaN, a subnormal, -inf) at any position of a C array -- in the head, at its edge,
    past it, in a last element outside a whole 64-bit word -- is seen; -0.0 is a zero; data
    not on an 8-byte boundary too."""
    from tapernn.nn import packing

    tiny = np.finfo(dtype).smallest_subnormal
    for shape in ((3, packing.HEAD + 5), (packing.HEAD - 1,), (1, 1), (0, 4), (2 * packing.HEAD,)):
        for skip in (0, 1):  # (1: the data one element past an 8-byte word's start)
            a = np.zeros(np.prod(shape, dtype=int) + skip, dtype)[skip:].reshape(shape)
            assert packing._zeros(a)
            flat = a.reshape(-1)
            flat[:] = -0.0
            assert packing._zeros(a)
            for at in {0, packing.HEAD - 1, packing.HEAD, flat.size - 2, flat.size - 1}:
                if not 0 <= at < flat.size:
                    continue
                for v in (1.0, np.nan, -1e-300, -0.0, tiny, -tiny, -np.inf):
                    flat[:] = 0
                    flat[at] = v
                    assert packing._zeros(a) == (not a.any()), (shape, skip, at, v)
