"""A masked (Sequencer lengths=) model's steady training loop memory (hmpeak, issue 19): its
compile report's peak is what tracemalloc sees (within 10 %), and get_grad_hidden_state's tap
holds the caller's data input and output gradient by reference (fingerprinted) where no tap
room exists -- a masked loop's saved slab has none (its per-step rows interleave y, the gates,
c and the masks, so the backward's dZ rows get a buffer of their own) -- instead of copying
them (2 T*B*H arrays at the loop's peak). Equivalence, float64 at 1e-12: the state gradients
read from the held arrays against complex-step NumPy equations of the masked loop (state held,
output 0 past a row's length); changed in place they raise StateError, never another number."""

import numpy as np
import pytest
from cell_reference import fastlstm_step

from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes
from tapernn.errors import StateError
from tapernn.nn import state_grads
from tapernn.nn.runtime import runtime_of
from tapernn.nn.state_grads import tap_copy_bytes

CELLS = {"FastLSTM": nn.FastLSTM, "GRU": nn.GRU}


def _masked_step(seq, x, g, lengths):
    def step() -> None:
        seq.zero_grad_parameters()
        seq.forward(x, lengths=lengths)
        seq.backward(x, g)
        seq.update_parameters(1e-3)

    return step


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("unroll", [False, True])
def test_masked_loop_peak_is_the_reported_peak(cell, unroll):
    T, B, H = 10, 16, 64
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    g = rng.standard_normal((T, B, H)).astype(np.float32)
    lengths = rng.integers(T // 2, T + 1, B)
    seq = nn.Sequencer(CELLS[cell](H, H), unroll=unroll).astype(np.float32)
    seq.set_plan_options(PlanOptions(backend="numpy"))
    real = loop_peak_bytes(_masked_step(seq, x, g, lengths))
    reported = seq.compile_report().peak_bytes
    assert abs(real - reported) <= 0.1 * reported, (
        f"tracemalloc peak {real:,} B, compile report {reported:,} B ({real / reported:.2f}x)"
    )


T, B, H = 5, 4, 3
LENGTHS = np.array([5, 2, 4, 1])


def _data(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))


def _model(backend):
    m = nn.FastLSTM(H, H)
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(10 + k).standard_normal(p.shape) * 0.4
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(backend=backend))
    return m, seq


def _masked_state_grads(params, x, g, t):
    """d sum(g[s] * y[s] for s > t) / d (h_t, c_t) by complex step, the masked loop's
    equations: past its length a row's state is held and its output is 0."""
    live = np.arange(T)[:, None] < LENGTHS[None, :]  # (T, B)
    state = [np.zeros((B, H)), np.zeros((B, H))]
    for s in range(t + 1):
        new = fastlstm_step(params, x[s] * live[s][:, None], *state)
        state = [np.where(live[s][:, None], n, o) for n, o in zip(new, state)]
    out = []
    for k in range(2):
        grad = np.zeros((B, H))
        for idx in np.ndindex(grad.shape):
            st = [v.astype(complex) for v in state]
            st[k][idx] += 1e-30j
            total = 0
            for s in range(t + 1, T):
                new = fastlstm_step(params, x[s] * live[s][:, None], *st)
                st = [np.where(live[s][:, None], n, o) for n, o in zip(new, st)]
                total = total + np.sum(g[s] * st[0] * live[s][:, None])
            grad[idx] = total.imag / 1e-30
        out.append(grad)
    return out


@pytest.fixture
def watch_all(monkeypatch):
    """Hold arrays of any size by reference (the tests' shapes are small)."""
    monkeypatch.setattr(state_grads, "WATCH_MIN_BYTES", 0)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_masked_tap_holds_input_and_output_gradient_without_a_room(watch_all, backend):
    """Three calls (the general path, then the steady one): no tap room, the pending state
    gradients hold the caller's x and g themselves (parameters copied), the report counts
    neither, and after an update they equal the masked loop's equations."""
    m, seq = _model(backend)
    for k in range(3):
        x, g = _data(k)
        params = {name: p.data.copy() for name, p in m.named_parameters().items()}
        seq.forward(x, lengths=LENGTHS)
        seq.backward(x, g)
        exe = runtime_of(seq).history[-1].exe
        pair = exe.training_pair
        assert pair.tap_room(pair.last_backward) is None
        pending = m.__dict__["_grad_hidden"]
        args, seeds, watched = pending.args[4], pending.args[5], pending.args[7]
        assert args[0] is x and seeds[0] is g
        # (x, g; the length mask too: the Sequencer's own array, made each call)
        assert {k for k, _, _ in watched} == {0, 1, len(args)}
        assert args[1].shape == (T, B, 1)
        assert all(not np.may_share_memory(a, p.data) for a in args for p in m.parameters())
        params_bytes = sum(p.data.nbytes for p in m.parameters())
        assert tap_copy_bytes(exe) < params_bytes + x.nbytes  # (x and g not counted)
        seq.update_parameters(0.5)
        for t in (0, 2):
            want = _masked_state_grads(params, x, g, t)
            for got, w in zip(m.get_grad_hidden_state(t), want):
                np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)


def test_masked_tap_held_buffers_changed_in_place_raise(watch_all):
    """x, then g, changed in place after the backward (a padded row's element: what the loop
    never read): get_grad_hidden_state raises StateError naming it; put back, it reads the
    masked equations' values."""
    m, seq = _model("numpy")
    x, g = _data(0)
    seq.forward(x, lengths=LENGTHS)
    seq.backward(x, g)
    params = {name: p.data.copy() for name, p in m.named_parameters().items()}
    for name, buf in (("input", x), ("output gradient", g)):
        kept = buf[-1, 1].copy()
        buf[-1, 1] = np.nan
        with pytest.raises(StateError, match=name):
            m.get_grad_hidden_state(2)
        buf[-1, 1] = kept
    want = _masked_state_grads(params, x, g, 2)
    got = m.get_grad_hidden_state(2)
    assert len(got) == 2
    for a, w in zip(got, want):
        np.testing.assert_allclose(a, w, rtol=1e-12, atol=1e-12)
