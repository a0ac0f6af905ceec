"""The memory a steady training loop really holds (tracemalloc) against the compile report's
number, and the release of saved activations once backward has consumed them (with the
semantics kept: a second backward of one forward, step-wise BPTT, get_grad_hidden_state)."""

import numpy as np
import pytest

from tapernn import nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step

CELLS = {
    "FastLSTM": lambda H: nn.FastLSTM(H, H),
    "LSTM": lambda H: nn.LSTM(H, H),
    "GRU": lambda H: nn.GRU(H, H),
}


def _data(T, B, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((T, B, H)).astype(dtype),
        rng.standard_normal((T, B, H)).astype(dtype),
    )


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("unroll", [True, False])
def test_steady_loop_peak_is_the_reported_peak(cell, dtype, unroll):
    T, B, H = 10, 16, 64
    x, g = _data(T, B, H, dtype)
    seq = nn.Sequencer(CELLS[cell](H), unroll=unroll).astype(dtype)
    real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
    reported = seq.compile_report().peak_bytes
    assert abs(real - reported) <= 0.1 * reported, (
        f"tracemalloc peak {real:,} B, compile report {reported:,} B ({real / reported:.2f}x)"
    )


def test_saved_activations_are_released_after_backward():
    x, g = _data(6, 4, 8, np.float64)
    seq = nn.Sequencer(nn.FastLSTM(8, 8))
    seq.forward(x)
    record = seq._runtime.history[-1]
    assert record.saved  # kept from forward for backward
    seq.backward(x, g)
    assert record.saved is None


def test_a_second_backward_of_one_forward_accumulates_the_same_gradients():
    """Torch7: any number of backwards after one forward, the gradients add up; once the saved
    values are released the second one recomputes them from the forward's arguments."""
    x, g = _data(6, 4, 8, np.float64)
    seq = nn.Sequencer(nn.FastLSTM(8, 8))
    seq.zero_grad_parameters()
    seq.forward(x)
    gx1 = np.array(seq.backward(x, g))
    once = [p.grad.copy() for p in seq.parameters()]
    gx2 = np.array(seq.backward(x, 2 * g))
    np.testing.assert_allclose(gx2, 2 * gx1, rtol=1e-12, atol=1e-14)
    for p, g1 in zip(seq.parameters(), once):
        np.testing.assert_allclose(p.grad, 3 * g1, rtol=1e-12, atol=1e-14)


def test_a_second_backward_reuses_the_forwards_dropout_masks():
    rng = np.random.default_rng(5)
    x, g = rng.standard_normal((5, 3, 6)), rng.standard_normal((5, 3, 6))
    seq = nn.Sequencer(nn.Sequential().add(nn.Dropout(0.5)).add(nn.FastLSTM(6, 6)))
    seq.forward(x)
    gx1 = np.array(seq.backward(x, g))
    gx2 = np.array(seq.backward(x, g))
    np.testing.assert_allclose(gx2, gx1, rtol=1e-12, atol=1e-14)


def test_stepwise_backward_releases_each_steps_saved_values():
    lstm = nn.FastLSTM(3, 4)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 3)) for _ in range(4)]
    for x in xs:
        lstm.forward(x)
    records = list(lstm._runtime.history)
    for t in reversed(range(4)):
        lstm.backward(xs[t], np.ones((2, 4)))
        assert records[t].saved is None and all(r.saved for r in records[:t])


def test_grad_hidden_state_after_release_equals_a_set_hidden_state_probe():
    """get_grad_hidden_state (computed lazily by a variant program from copies of the call's
    arguments) is unchanged by the release of the saved values and a later update."""
    x, g = _data(5, 3, 4, np.float64)
    seq = nn.Sequencer(nn.FastLSTM(4, 4))
    seq.forward(x)
    seq.backward(x, g)
    before = [p.data.copy() for p in seq.parameters()]
    seq.update_parameters(0.5)
    got = seq.get_grad_hidden_state(2)
    fresh = nn.Sequencer(nn.FastLSTM(4, 4))
    for p, d in zip(fresh.parameters(), before):
        p.data[...] = d
    fresh.forward(x)
    fresh.backward(x, g)
    want = fresh.get_grad_hidden_state(2)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_charlm_training_loop_peak_is_the_reported_peak():
    """The loop `tapernn train` runs: LookupTable -> Sequencer(LSTM, Dropout) -> Sequencer(Linear),
    remembered state (two signatures: the first chunk and the remembered ones), backward without
    the input gradient, clipping and SGD; the model's report against what the model holds (the
    criterion's own programs and arrays are measured apart: its compile report is its own)."""
    from tapernn import optim
    from tapernn.apps.charlm import CharLM

    lm = CharLM(20, nn.FastLSTM, 1, 24, 96, dropout=0.2, remember=True, dtype="float32")
    rng = np.random.default_rng(0)
    ids, grad = rng.integers(0, 20, (12, 16)), rng.standard_normal((12, 16, 20)).astype(np.float32)
    opt = optim.SGD(lm.parameters(), lr=0.1)

    def step():
        lm.model.zero_grad_parameters()
        lm.model.forward(ids)
        lm.model.backward(ids, grad, need_grad_input=False)
        optim.clip_grad_norm(lm.parameters(), 5.0)
        opt.step()

    real = loop_peak_bytes(step)
    reported = lm.model.compile_report().peak_bytes
    assert abs(real - reported) <= 0.1 * reported, (
        f"tracemalloc peak {real:,} B, compile report {reported:,} B ({real / reported:.2f}x)"
    )


@pytest.mark.parametrize("unroll", [True, False])
def test_remembering_sequencer_loop_peak_is_the_reported_peak(unroll):
    """Issue 16: a rolled loop's final states are views of its slab; kept as the next call's
    start they held the whole slab through it, and the loop bodies' own buffers were not
    counted."""
    x, g = _data(10, 16, 64, np.float64)
    seq = nn.Sequencer(nn.FastLSTM(64, 64), unroll=unroll).remember("both")
    real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
    reported = seq.compile_report().peak_bytes
    assert abs(real - reported) <= 0.1 * reported, (
        f"tracemalloc peak {real:,} B, compile report {reported:,} B ({real / reported:.2f}x)"
    )


def _root_array(a):
    while a.base is not None:
        a = a.base
    return a


def test_all_programs_of_a_module_share_one_arena_and_stay_exact():
    """Two batch sizes alternating, a backward without dX and an evaluation forward: every
    program's buffers are views of the module's one arena, and every gradient equals the one
    a fresh module computes alone (float64, 1e-12)."""
    rng = np.random.default_rng(7)
    xa, ga = rng.standard_normal((5, 4, 6)), rng.standard_normal((5, 4, 6))
    xb, gb = rng.standard_normal((5, 2, 6)), rng.standard_normal((5, 2, 6))
    seq = nn.Sequencer(nn.FastLSTM(6, 6))
    state = seq.state_dict()

    def alone(x, g, need_grad_input=True):
        m = nn.Sequencer(nn.FastLSTM(6, 6))
        m.load_state_dict(state)
        m.zero_grad_parameters()
        m.forward(x)
        gx = m.backward(x, g, need_grad_input=need_grad_input)
        return gx, [p.grad.copy() for p in m.parameters()]

    for x, g, ngi in ((xa, ga, True), (xb, gb, True), (xa, ga, False), (xb, gb, True)):
        seq.zero_grad_parameters()
        seq.forward(x)
        gx = seq.backward(x, g, need_grad_input=ngi)
        want_gx, want = alone(x, g, ngi)
        if ngi:
            np.testing.assert_allclose(gx, want_gx, rtol=1e-12, atol=1e-14)
        for p, w in zip(seq.parameters(), want):
            np.testing.assert_allclose(p.grad, w, rtol=1e-12, atol=1e-14)
    seq.evaluate()
    seq.forward(xa)
    rt = seq._runtime
    programs = [exe.forward_only for exe in rt.cache.values() if exe.forward_only]
    for exe in rt.cache.values():
        if exe.training_pair is not None:
            pair = exe.training_pair
            programs += [pair.forward, pair.backward, *pair.variants.values()]
    assert len(programs) >= 6
    arenas = {id(_root_array(a)) for c in programs for a in c.program.arrays}
    assert arenas <= {id(a) for a in rt.arena.given} and len(rt.arena.given) <= 2


def test_a_second_backward_after_an_update_sees_the_updated_parameters():
    """The documented cost of releasing the saved values: a second backward of one forward
    recomputes them with the parameters as they are then (as a fresh forward would)."""
    x, g = _data(4, 3, 5, np.float64)
    seq = nn.Sequencer(nn.FastLSTM(5, 5))
    seq.forward(x)
    seq.backward(x, g)
    seq.update_parameters(0.1)
    seq.zero_grad_parameters()
    gx = np.array(seq.backward(x, g))
    fresh = nn.Sequencer(nn.FastLSTM(5, 5))
    fresh.load_state_dict(seq.state_dict())
    fresh.forward(x)
    np.testing.assert_allclose(gx, fresh.backward(x, g), rtol=1e-12, atol=1e-14)
    for p, q in zip(seq.parameters(), fresh.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-14)


def test_stepwise_bptt_loop_peak_is_the_reported_peak():
    """Stepping by hand: T steps' records (outputs, saved values, input copies) are held until
    their backward; the report counts the most steps held at once."""
    T, B, H = 10, 16, 64
    x, g = _data(T, B, H, np.float64)
    lstm = nn.FastLSTM(H, H)

    def step():
        lstm.zero_grad_parameters()
        for t in range(T):
            lstm.forward(x[t])
        for t in reversed(range(T)):
            lstm.backward(x[t], g[t])
        lstm.update_parameters(1e-3)
        lstm.forget()

    real = loop_peak_bytes(step)
    reported = lstm.compile_report().peak_bytes
    assert abs(real - reported) <= 0.1 * reported, (
        f"tracemalloc peak {real:,} B, compile report {reported:,} B ({real / reported:.2f}x)"
    )


@pytest.mark.parametrize("cell", list(CELLS))
def test_rolled_loop_peak_is_at_most_the_unrolled_one(cell):
    """Issue 16's memory target, measured as the bench measures it (tracemalloc, steady loop):
    the rolled program (the default) holds at most what unroll=True holds."""
    T, B, H = 20, 16, 64
    x, g = _data(T, B, H, np.float32)
    peaks = {
        unroll: loop_peak_bytes(
            tapernn_loop_step(nn.Sequencer(CELLS[cell](H), unroll=unroll).astype(np.float32), x, g)
        )
        for unroll in (False, True)
    }
    assert peaks[False] <= peaks[True], (
        f"rolled {peaks[False]:,} B > unroll=True {peaks[True]:,} B "
        f"({peaks[False] / peaks[True]:.2f}x)"
    )


# (each cell's loop kernels at these shapes cost ~10-20 s cold in CI; LSTM's were measured the
# same way, BENCHMARKS.md "numba loop kernels on the shared slab". GRU: its bias adds over
# strided column blocks, whose NumPy buffers the report does not model (hfix: 1.21x before the
# tap_room_min_bytes fix, 1.04x after; hpeak8))
@pytest.mark.parametrize("cell", ["FastLSTM", "GRU"])
def test_numba_loop_kernels_peak_is_the_reported_one_and_at_most_unrolled(cell, monkeypatch):
    """The numba backend's small loops (body values <= LOOP_MAX_SIZE: the numba loop kernel,
    writing its slabs over the projection and the saved gate rows as the Python runner does):
    the report's peak is what tracemalloc sees, and at most unroll=True's. (unroll=True on the
    NumPy backend: the same plan; on numba it would compile ~10 fused-group kernels cold.)"""
    import tapernn as tn

    T, B, H = 20, 8, 16
    x, g = _data(T, B, H, np.float32)
    monkeypatch.setenv("TAPERNN_BACKEND", "numba")
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        # (numba's modules imported on a kernel's first use make ~22 KB of arrays of their own
        # once per process: a model of the same shapes first, so they are not this one's)
        tapernn_loop_step(nn.Sequencer(CELLS[cell](H)).astype(np.float32), x, g)()
        seq = nn.Sequencer(CELLS[cell](H)).astype(np.float32)
        real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
        report = seq.compile_report()
    finally:
        tn.set_backend(before)
    assert all("numba loop kernel" in loop.kernel for loop in report.loops), report.loops
    assert abs(real - report.peak_bytes) <= 0.1 * report.peak_bytes, (
        f"tracemalloc peak {real:,} B, compile report {report.peak_bytes:,} B "
        f"({real / report.peak_bytes:.2f}x)"
    )
    unrolled = nn.Sequencer(CELLS[cell](H), unroll=True).astype(np.float32)
    with_numpy = loop_peak_bytes(tapernn_loop_step(unrolled, x, g))
    assert real <= with_numpy, f"rolled {real:,} B > unroll=True {with_numpy:,} B"
