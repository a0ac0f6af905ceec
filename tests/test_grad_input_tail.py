"""The input gradient over the dead tail of the dZ rows (issue 19, hpeep): a TrainingPair's
backward computes its returned GEMM dX = dZ @ W_x (dZ the reverse loop's rows, donated into
the forward's saved slab, which `output` keeps) over the last T*B*D elements of those rows
(donate.tail_gemms, tail_matmul: row blocks from the end, scheduled after every other read of
the rows), so the steady loop holds no array of its own for it; the tap room (get_grad_hidden
state's copies) ends before it. Structure, equivalence (float64, 1e-12: the run without it, the
NumPy equations by complex step), a held grad_input unchanged by later calls, the report
against tracemalloc, tail_matmul alone."""

import numpy as np
import pytest

import tapernn.arena
from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.donate import tail_matmul
from tapernn.nn.runtime import runtime_of
from tests import cell_reference as ref

T, B, H = 3, 2, 4
LOW = {"grad_input_tail_min_bytes": 0}  # (the tail from any size: tiny shapes for the complex step)
CELLS = {
    "FastLSTM": (lambda: nn.FastLSTM(H, H), ref.fastlstm_step),
    "LSTM": (lambda: nn.LSTM(H, H), ref.lstm_step),
    "LSTM(peephole=False)": (
        lambda: nn.LSTM(H, H, peephole=False),
        lambda p, x, h, c: ref.lstm_step(p, x, h, c, peephole=False),
    ),
    # (its dX GEMM reads the first 3H columns of its 4H dZ rows [dz_r dz_z dz_n | r*h])
    "GRU": (lambda: nn.GRU(H, H), ref.gru_step),
}
N_STATES = {"GRU": 1}


def _model(cell, seed=0, h=H):
    big = {"LSTM": nn.LSTM, "GRU": nn.GRU}.get(cell, nn.FastLSTM)
    m = CELLS[cell][0]() if h == H else big(h, h)
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(seed + k).standard_normal(p.shape) * 0.3
    return m


def _data(seed, t=T, b=B, h=H):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, b, h)), rng.standard_normal((t, b, h))


@pytest.fixture
def tails_off(monkeypatch):
    def off():
        monkeypatch.setattr(tapernn.arena, "tail_gemms", lambda *a, **k: {})

    return off


# (numba: a shape whose forward is no whole-program kernel, which keeps the saved values in a
# workspace of its own, reused every call: no tail there)
SHAPES = {"numpy": (T, B, H), "numba": (4, 16, 128)}


def _run(cell, backend, rounds=3, hold=False):
    t, b, h = SHAPES[backend]
    m = _model(cell, h=h)
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(backend=backend, layout="batch", **LOW))
    got, held = [], []
    for k in range(rounds):
        x, g = _data(k, t, b, h)
        seq.zero_grad_parameters()
        out = seq.forward(x)
        gi = seq.backward(x, g)
        states = [np.array(s) for s in m.get_grad_hidden_state(0)]
        got.append([np.array(out), np.array(gi)] + [p.grad.copy() for p in m.parameters()])
        got[-1] += states
        held.append((gi, np.array(gi)))
        seq.update_parameters(0.1)
    if hold:  # (each call's grad_input, held: never written by a later call)
        for gi, copy in held:
            np.testing.assert_array_equal(gi, copy)
    return seq, m, got


def _close(a, b):
    for u, v in zip(a, b):
        for p, q in zip(u, v):
            np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)


def _base(a):
    while a.base is not None:
        a = a.base
    return a


@pytest.mark.parametrize(
    "cell,backend",
    [(c, "numpy") for c in CELLS] + [("FastLSTM", "numba"), ("LSTM", "numba"), ("GRU", "numba")],
)
def test_grad_input_lies_in_the_saved_slab_and_equals_the_run_without_it(cell, backend, tails_off):
    seq, _m, on = _run(cell, backend, hold=True)
    pair = runtime_of(seq).last.training_pair
    bwd = pair.backward.program
    ((node, (_inp, off)),) = bwd.plan.tail_of.items()
    assert node.op == "matmul" and "tail_matmul(" in bwd.source
    room = pair.tap_room(pair.backward)
    assert room is None or room[1] <= off * node.dtype.itemsize
    x, g = _data(5, *SHAPES[backend])
    out = seq.forward(x)
    gi = seq.backward(x, g)
    assert _base(gi) is _base(out)  # (the slab `output` keeps)
    tails_off()
    seq_off, _, off_run = _run(cell, backend)
    assert not runtime_of(seq_off).last.training_pair.backward.program.plan.tail_of
    _close(on, off_run)


@pytest.mark.parametrize("cell", list(CELLS))
def test_values_and_gradients_equal_the_numpy_equations(cell):
    _, m, on = _run(cell, "numpy", rounds=1)
    params = {name: p.data.copy() for name, p in _model(cell).named_parameters().items()}
    x, g = _data(0)
    step = CELLS[cell][1]
    n = N_STATES.get(cell, 2)
    want, _ = ref.run(step, params, x, n, H)
    np.testing.assert_allclose(on[0][0], want, rtol=1e-12, atol=1e-12)
    grads = ref.complex_step_grads(step, params, x, n, H, g)
    np.testing.assert_allclose(on[0][1], grads["input"], rtol=1e-10, atol=1e-12)
    for k, (name, p) in enumerate(m.named_parameters().items()):
        np.testing.assert_allclose(on[0][2 + k], grads[name], rtol=1e-10, atol=1e-12)


def test_the_report_counts_no_grad_input_and_stays_within_10_percent_of_the_loop_peak():
    x, g = (a.astype(np.float32) for a in _data(0, 24, 16, 64))
    peaks, reports = [], []
    for k in range(2):
        seq = nn.Sequencer(nn.FastLSTM(64, 64)).astype("float32")
        seq.set_plan_options(PlanOptions(backend="numpy"))
        peaks.append(loop_peak_bytes(tapernn_loop_step(seq, x, g), 3, 3))
        reports.append(seq.compile_report().peak_bytes)
        assert abs(peaks[-1] - reports[-1]) <= 0.1 * reports[-1]
        if k == 0:
            assert runtime_of(seq).last.training_pair.backward.program.plan.tail_of
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(tapernn.arena, "tail_gemms", lambda *a, **k: {})
                seq = nn.Sequencer(nn.FastLSTM(64, 64)).astype("float32")
                seq.set_plan_options(PlanOptions(backend="numpy"))
                peaks.append(loop_peak_bytes(tapernn_loop_step(seq, x, g), 3, 3))
                reports.append(seq.compile_report().peak_bytes)
            break
    # (without it the steady loop holds the input gradient beside the slab: x.nbytes more)
    assert peaks[1] - peaks[0] >= 0.9 * x.nbytes
    assert reports[1] - reports[0] >= 0.9 * x.nbytes


@pytest.mark.parametrize("n,k,d", [(1600, 64, 16), (7, 8, 2), (100, 22, 11), (1, 4, 1), (50, 9, 3)])
def test_tail_matmul_writes_over_the_rows_it_has_read(n, k, d):
    rng = np.random.default_rng(n)
    memory = rng.standard_normal(n * k + 3)
    a = memory[3:].reshape(n, k)
    b = rng.standard_normal((k, d))
    want = a @ b
    out = memory[3 + n * k - n * d :].reshape(n, d)
    seen = []

    def matmul(u, v, out=None):
        assert out is None or not np.may_share_memory(u, out)
        seen.append(u.shape[0])
        return np.matmul(u, v, out=out)

    tail_matmul(a, b, out, matmul)
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-13)
    assert sum(seen) == n and len(seen) <= 2 + np.log2(max(n, 2)) * 2
    # (a temporary for the rows n*(k-d)/k cannot hold, then the rest in one block)
    assert len(seen) <= 2
    assert seen[0] == n - n * (k - d) // k


def test_no_tail_after_a_whole_program_forward_kernel():
    """numba at a tiny shape: the forward is one @njit function whose saved values live in its
    workspace, reused by the next call (not `output`'s array): no tail, held values stay."""
    m = _model("FastLSTM")
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(backend="numba", layout="batch", **LOW))
    held = []
    for k in range(3):
        x, g = _data(k)
        seq.forward(x)
        gi = seq.backward(x, g)
        held.append((gi, np.array(gi)))
    pair = runtime_of(seq).last.training_pair
    if pair.forward.program_kernel is None:
        pytest.skip("no whole-program kernel here")
    assert not pair.backward.program.plan.tail_of
    for gi, copy in held:
        np.testing.assert_array_equal(gi, copy)
