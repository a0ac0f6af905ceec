"""The numba backend's packed loop panels made in the packed weight's zeroed `.grad` (issue 19,
hpeak9; pack_scratch.py): a loop prologue's `pack_panels` result gets a slot of its program's
`dest` (Program.pack_slots), the top-level forward and backward map it to the parameter
(Program.loop_scratch), Packing.scratch_into (forward) and compute_into (backward) lend the
`.grad` when it holds only zeros, and the loop's runner zeroes it when the loop ends (the
backward then computes that gradient there). Structure, zeros after, equivalence (float64,
1e-12: the same model with the lending off, the NumPy backend, the NumPy equations),
accumulation without zeroing (never lent), an argument's memory (never lent), the report."""

import numpy as np
import pytest
from lend_check import data, seeded, spy_lend

import tapernn.codegen
from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.backends import numba_available
from tapernn.nn import packing
from tapernn.nn.runtime import runtime_of
from tapernn.nn.training_pair import per_call_peak
from tests import cell_reference as ref

# (B * 4H = 8192 > the numba loop kernel's 4096: the Python loop runs the packed GEMMs; the
# recurrent weight 4H x H = 65,536 elements: packed)
T, B, H = 4, 16, 128

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
]


# these tests pin the unsplit loop (own_threads / batch_split split it by default here); a split
# loop's lending: tests/test_split_lend.py
ONE_THREAD = {"own_threads": "off", "batch_split": "off"}

CELLS = {"FastLSTM": lambda: nn.FastLSTM(H, H), "LSTM": lambda: nn.LSTM(H, H, peephole=False)}


def _model(seed=0, cell="FastLSTM"):
    return seeded(CELLS[cell], seed)


def _data(seed):
    return data((T, B, H), seed)


@pytest.fixture
def lent(monkeypatch):
    """Per forward and backward: the `.grad` arrays lent to a loop's panels."""
    return spy_lend(monkeypatch)


def _off(monkeypatch):
    monkeypatch.setattr(tapernn.codegen, "loop_slots", lambda *a: {})


def _run(backend="numba", rounds=3, zero=True, x=None, cell="FastLSTM"):
    m = _model(cell=cell)
    seq = nn.Sequencer(m).set_plan_options(
        PlanOptions(backend=backend, layout="batch", **ONE_THREAD)
    )
    got = []
    for k in range(rounds):
        xk, g = _data(k)
        if zero:
            seq.zero_grad_parameters()
        out = np.array(seq.forward(xk if x is None else x))
        gi = np.array(seq.backward(xk if x is None else x, g))
        got.append(
            [out, gi]
            + [p.grad.copy() for p in m.parameters()]
            + [np.array(s) for s in m.get_grad_hidden_state(1)]
        )
        seq.update_parameters(0.1)
    return seq, m, got


def _close(a, b):
    for u, v in zip(a, b):
        for p, q in zip(u, v):
            np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)


def test_forward_and_backward_lend_the_packed_weights_grad(lent):
    seq, m, _ = _run()
    pair = runtime_of(seq).last.training_pair
    for prog in (pair.forward.program, pair.last_backward.program):
        ((dest, s, node, rows, _),) = prog.loop_scratch.values()
        assert node.op == "pack_panels" and node.size == 4 * H * H and rows is None
        assert dest[s] is None  # (cleared after the call)
    assert len(lent) == 6  # three forwards and three backwards (general path, then steady)
    for used in lent:
        assert [u is m.o2g.weight.grad for u in used] == [True]


@pytest.mark.parametrize("overwritten", [True, False])
def test_the_loop_zeroes_the_lent_grad_when_it_ends(overwritten, lent, monkeypatch):
    """The forward's `.grad` holds zeros after the call; the backward's holds zeros when its
    loop returns (before the gradient is computed there), checked around the loop's runner --
    but the panels stay when the backward computes that `.grad` whole after the loop
    (pack_scratch.Lent.left: `overwritten`; else _within is made to say no)."""
    if not overwritten:
        monkeypatch.setattr(packing, "_within", lambda a, known: False)
    m = _model()
    seq = nn.Sequencer(m).set_plan_options(
        PlanOptions(backend="numba", layout="batch", **ONE_THREAD)
    )
    x, g = _data(0)
    seq.zero_grad_parameters()
    seq.forward(x)
    assert lent[-1] and not m.o2g.weight.grad.any()
    bwd = runtime_of(seq).last.training_pair.backward_program(0)
    ((dest, s, *_),) = bwd.program.loop_scratch.values()
    seen = []
    kw = bwd.program.fn.__kwdefaults__
    (name,) = [k for k in kw if k.startswith("scan_run")]
    runner = kw[name]

    def watch(*args, **kwargs):
        out = runner(*args, **kwargs)
        seen.append((dest[s] is not None, s in dest.left, m.o2g.weight.grad.any()))
        return out

    monkeypatch.setitem(kw, name, watch)
    seq.backward(x, g)
    assert seen == [(True, overwritten, overwritten)]
    assert lent[-1] == [m.o2g.weight.grad] and m.o2g.weight.grad.any()
    assert dest[s] is None and not dest.left


@pytest.mark.parametrize("cell", list(CELLS))
def test_values_and_gradients_equal_the_lending_off_run_numpy_and_the_equations(
    cell, lent, monkeypatch
):
    """Outputs, the input gradient, every parameter gradient and get_grad_hidden_state over
    three zeroed loop steps with updates: the same as with the lending off and as the NumPy
    backend, at 1e-12; the outputs as the NumPy equations. LSTM(peephole=False): rows 4H:8H of
    its (8H, H) block's `.grad` lent to the backward's panels (its forward copies those rows
    transposed into them: hpeak8)."""
    seq, m, on = _run(cell=cell)
    assert all(lent[1::2])  # (every backward lent)
    if cell == "LSTM":
        assert all(np.shares_memory(u[0], m.w_hi._block.grad[4 * H :]) for u in lent[1::2])
    with monkeypatch.context() as mp:
        _off(mp)
        seq, _, off = _run(cell=cell)
        assert not runtime_of(seq).last.training_pair.last_backward.program.loop_scratch
    _close(on, off)
    _close(on, _run("numpy", cell=cell)[2])
    params = {name: p.data.copy() for name, p in _model(cell=cell).named_parameters().items()}
    step = ref.fastlstm_step
    if cell == "LSTM":
        step = lambda p, x, h, c: ref.lstm_step(p, x, h, c, peephole=False)
    want, _ = ref.run(step, params, _data(0)[0], 2, H)
    np.testing.assert_allclose(on[0][0], want, rtol=1e-12, atol=1e-12)


def test_gradients_accumulated_without_zeroing_are_never_lent(lent, monkeypatch):
    """No zeroing between rounds (Torch7 accumulates): only the first forward and backward find
    zeros; the sums equal those with the lending off."""
    _, _, on = _run(zero=False)
    assert [bool(u) for u in lent] == [True, True] + [False] * 4
    with monkeypatch.context() as mp:
        _off(mp)
        _, _, off = _run(zero=False)
    _close(on, off)


def test_a_grad_sharing_memory_with_an_argument_is_not_lent(lent):
    m = _model()
    seq = nn.Sequencer(m).set_plan_options(
        PlanOptions(backend="numba", layout="batch", **ONE_THREAD)
    )
    seq.zero_grad_parameters()
    x = m.o2g.weight.grad.reshape(-1)[: T * B * H].reshape(T, B, H)  # zeros, in the .grad
    seq.forward(x)
    assert lent and not any(lent)
    seq.forward(np.zeros((T, B, H)))  # (the same zeros apart from it: lent)
    assert [u is m.o2g.weight.grad for u in lent[-1]] == [True]


def test_the_report_counts_no_panels_and_stays_within_10_percent_of_the_loop_peak():
    """float32 (8, 16, 128): the forward's and backward's per-call peaks without the lent panels
    are smaller, by at most their bytes; the loop's tracemalloc peak and the report agree within 10 %."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, H)).astype(np.float32)
    g = rng.standard_normal((8, 16, H)).astype(np.float32)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype("float32")
    seq.set_plan_options(PlanOptions(backend="numba", layout="batch", **ONE_THREAD))
    real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
    report = seq.compile_report().peak_bytes
    assert abs(real - report) <= 0.1 * report, (real, report)
    pair = runtime_of(seq).last.training_pair
    fwd, bwd = pair.forward, pair.last_backward
    ((*_, node, _, _),) = fwd.program.loop_scratch.values()
    assert 0 < per_call_peak(fwd) - per_call_peak(fwd, scratch=True) <= node.nbytes
    into = range(1, 1 + runtime_of(seq).last.packing.n_grads)
    ((*_, node, _, _),) = bwd.program.loop_scratch.values()
    assert 0 < per_call_peak(bwd, into) - per_call_peak(bwd, into, scratch=True) <= node.nbytes


def test_the_backward_reads_a_grad_it_just_saw_zeroed_once(lent, monkeypatch):
    """compute_into sees the packed weight's `.grad` hold zeros for its gradient's slot, then
    lends it to the loop's panels without reading it again (nothing ran in between:
    packing._within); with that off it is read twice. The same gradients either way."""
    from tapernn.nn import packing

    reads = []
    real = packing._zeros

    def counting(a):
        reads.append(np.shares_memory(a, m.o2g.weight.grad))
        return real(a)

    monkeypatch.setattr(packing, "_zeros", counting)
    got = {}
    for way in ("known", "read"):
        if way == "read":
            monkeypatch.setattr(packing, "_within", lambda a, known: False)
        m = _model()
        seq = nn.Sequencer(m).set_plan_options(
            PlanOptions(backend="numba", layout="batch", **ONE_THREAD)
        )
        x, g = _data(0)
        seq.forward(x)
        seq.zero_grad_parameters()
        reads.clear()
        seq.backward(x, g)
        assert lent[-1] == [m.o2g.weight.grad]
        got[way] = (sum(reads), [p.grad.copy() for p in m.parameters()])
    assert got["known"][0] == 1 and got["read"][0] == 2
    for p, q in zip(got["known"][1], got["read"][1]):
        np.testing.assert_array_equal(p, q)


def test_within_is_about_bytes_inside_a_c_array():
    from tapernn.nn.packing import _within

    base = np.zeros((8, 16))
    assert _within(base[2:5], [base]) and _within(base.reshape(-1)[3:40], [np.ones(2), base])
    assert not _within(base[2:5], []) and not _within(np.zeros(4), [base])
    assert not _within(base, [base[:7]])  # (only partly inside)
    assert not _within(base[:, :4], [base.T])  # (a non-C known array is never trusted)
