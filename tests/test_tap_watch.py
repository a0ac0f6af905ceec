"""get_grad_hidden_state's data input and output gradient kept by reference when their copies do
not fit the tap room (issue 19, hpeak8): a plain Sequencer backward places its copies of the
call's arguments and seeds in the saved slab's dead gate rows (TrainingPair.tap_room); the data
input and output gradient that do not fit are not copied but fingerprinted
(state_grads.tap_copies `watch`), parameters are always copied. Equivalence (float64, 1e-12,
complex-step NumPy equations): unchanged, refilled with the same values, or rebound by the
caller, the state gradients are the backward's; changed in place, get_grad_hidden_state raises
StateError, never a different number. Structure: which arrays are held by reference, and what
the report counts."""

import threading

import numpy as np
import pytest

from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.errors import StateError
from tapernn.nn import state_grads, tap_digest
from tapernn.nn.runtime import runtime_of
from tapernn.nn.state_grads import tap_copy_bytes
from tapernn.nn.tap_digest import fingerprint
from tests import cell_reference as ref

H = 8


def _model(seed=0):
    m = nn.FastLSTM(H, H)
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(seed + k).standard_normal(p.shape) * 0.3
    return m


def _data(seed, t, b):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, b, H)), rng.standard_normal((t, b, H))


def _state_grads(params, x, g, t):
    return ref.complex_step_state_grads(ref.fastlstm_step, params, x, g, t, H)


def _pending(m):
    pending = m.__dict__["_grad_hidden"]
    assert callable(pending)
    return pending


def _seq(m, backend):
    return nn.Sequencer(m).set_plan_options(PlanOptions(tap_room_min_bytes=0, backend=backend))


@pytest.fixture
def watch_all(monkeypatch):
    """Watch arrays of any size (the tests' shapes are small)."""
    monkeypatch.setattr(state_grads, "WATCH_MIN_BYTES", 0)


# (T, B) = (4, 4): the gate rows (T*B*4H) hold both weights (4H*H each) and the bias; the input
# and the output gradient (T*B*H each) do not fit
T, B = 4, 4


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_unchanged_input_and_output_gradient_are_held_not_copied(watch_all, backend):
    """Three loop steps (the general path, then the steady one): the pending state gradients
    hold the caller's input and output-gradient arrays themselves (the parameters as copies);
    read after an update, they equal the NumPy equations of what the backward saw."""
    m = _model()
    seq = _seq(m, backend)
    for k in range(3):
        x, g = _data(k, T, B)
        params = {name: p.data.copy() for name, p in m.named_parameters().items()}
        seq.forward(x)
        seq.backward(x, g)
        pending = _pending(m)
        args, seeds, watched = pending.args[4], pending.args[5], pending.args[7]
        assert args[0] is x and seeds[0] is g
        assert sorted(k for k, _, _ in watched) == [0, len(args)]
        assert all(not np.may_share_memory(a, p.data) for a in args for p in m.parameters())
        seq.update_parameters(0.5)
        for t in (0, 2):
            for got, w in zip(m.get_grad_hidden_state(t), _state_grads(params, x, g, t)):
                np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("which", ["input", "output gradient"])
@pytest.mark.parametrize("call", [1, 3])
def test_a_held_buffer_changed_in_place_raises(watch_all, backend, which, call):
    """The input or the output gradient refilled in place with other values after the backward:
    get_grad_hidden_state raises StateError naming it (general path: call 1; steady: call 3);
    refilled with the same values, the state gradients are the backward's."""
    m = _model()
    seq = _seq(m, backend)
    x, g = _data(0, T, B)
    for _ in range(call):
        seq.forward(x)
        seq.backward(x, g)
    params = {name: p.data.copy() for name, p in m.named_parameters().items()}
    want = _state_grads(params, x.copy(), g.copy(), 1)
    buf = x if which == "input" else g
    old = buf.copy()
    buf[0, 0, 0] += 1.0
    with pytest.raises(StateError, match=which):
        m.get_grad_hidden_state(1)
    buf[...] = old  # the same values again: what the backward saw
    for got, w in zip(m.get_grad_hidden_state(1), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("apart", [0, 1 << 40])
def test_held_buffers_fingerprinted_on_the_idle_worker_as_here(watch_all, monkeypatch, apart):
    """From APART_BYTES held (0: always; 2**40: never), with own_threads' worker there and idle,
    tap_copies shares the held input's and output gradient's fingerprints with the worker: the
    same fingerprints as taken here, an in-place change still raises, and the state gradients
    are the backward's (NumPy equations, 1e-12)."""
    from tapernn import own_threads

    own_threads.executor()  # (the worker: an owned call would have made it)
    if not own_threads.idle_worker():
        pytest.skip("one CPU or a one-thread BLAS policy: no worker is handed anything")
    monkeypatch.setattr(tap_digest, "APART_BYTES", apart)
    where, real = [], tap_digest.fingerprint
    monkeypatch.setattr(
        tap_digest, "fingerprint", lambda a, *k: where.append(threading.get_ident()) or real(a, *k)
    )
    m = _model()
    seq = _seq(m, "numpy")
    x, g = _data(0, T, B)
    params = {name: p.data.copy() for name, p in m.named_parameters().items()}
    want = _state_grads(params, x.copy(), g.copy(), 1)
    seq.forward(x)
    seq.backward(x, g)
    assert len(where) == 2
    if apart:  # (else either thread takes each: tap_digest.copy_and_digest, hserial's test)
        assert not any(t in own_threads.worker_ident for t in where)
    assert [fp for _, _, fp in _pending(m).args[7]] == [real(x), real(g)]
    was = g[0, 0, 0]
    g[0, 0, 0] = was + 1.0
    with pytest.raises(StateError, match="output gradient"):
        m.get_grad_hidden_state(1)
    g[0, 0, 0] = was
    for got, w in zip(m.get_grad_hidden_state(1), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)


def test_rebinding_the_callers_names_keeps_the_held_arrays(watch_all):
    """The caller binds its names to new arrays after the backward: the held arrays are the
    old ones, alive and unchanged, so the state gradients are the backward's."""
    m = _model()
    seq = _seq(m, "numpy")
    x, g = _data(0, T, B)
    params = {name: p.data.copy() for name, p in m.named_parameters().items()}
    want = _state_grads(params, x, g, 1)
    seq.forward(x)
    seq.backward(x, g)
    x, g = _data(5, T, B)  # (the old arrays: only the pending state gradients hold them)
    for got, w in zip(m.get_grad_hidden_state(1), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("how", ["update", "in place", "rebound"])
def test_parameters_that_do_not_fit_are_copied(watch_all, backend, how):
    """(T, B) = (3, 1): the weights do not fit the gate rows. Changed after the backward (an
    update, in place by hand, or rebound), get_grad_hidden_state is the backward's: parameters
    are never held by reference."""
    m = _model()
    seq = _seq(m, backend)
    x, g = _data(1, 3, 1)
    params = {name: p.data.copy() for name, p in m.named_parameters().items()}
    seq.forward(x)
    seq.backward(x, g)
    args = _pending(m).args[4]
    assert not any(a is p.data for a in args for p in m.parameters())
    if how == "update":
        seq.update_parameters(0.5)
    elif how == "in place":
        for p in m.parameters():
            p.data[...] *= 2.0
    else:
        m.o2g.weight.data = m.o2g.weight.data * 2.0  # (rebound: a new array)
    for got, w in zip(m.get_grad_hidden_state(1), _state_grads(params, x, g, 1)):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)


def test_the_report_does_not_count_held_arrays(watch_all, monkeypatch):
    m = _model()
    seq = _seq(m, "numpy")
    x, g = _data(0, T, B)
    seq.forward(x)
    seq.backward(x, g)
    exe = runtime_of(seq).history[-1].exe
    held = tap_copy_bytes(exe)
    monkeypatch.setattr(state_grads, "WATCH_MIN_BYTES", 1 << 40)
    assert tap_copy_bytes(exe) == held + x.nbytes + g.nbytes


def test_fingerprint_sees_any_changed_word_and_not_the_same_values():
    a = np.random.default_rng(0).standard_normal((64, 33))
    fp = fingerprint(a)
    for idx in [(0, 0), (31, 7), (63, 32)]:
        b = a.copy()
        b.view(np.uint64)[idx] ^= np.uint64(1)  # one bit
        assert fingerprint(b)[3:] != fp[3:]
    b = a.copy()
    b[0, 0], b[5, 5] = a[5, 5], a[0, 0]  # two words swapped
    assert fingerprint(b)[3:] != fp[3:]
    b = a.copy()
    assert fingerprint(b)[3:] == fp[3:] and fingerprint(b) != fp  # (another array: elsewhere)
    c = np.arange(7, dtype=np.int8)  # (a length that is no multiple of 8)
    assert fingerprint(c) != fingerprint(c[::-1].copy())


def test_loop_peak_holds_no_copy_of_the_held_buffers_and_the_report_says_so():
    """(T, B, H) = (8, 32, 128) float32: the weights (2U each) fill the gate rows (4U); the input
    and the output gradient (1U each, 128 KiB) are held, not copied: the loop peak is lower by
    them than when they are copied, and the report stays within 10 % of tracemalloc."""
    t, b, h = 8, 32, 128
    rng = np.random.default_rng(0)
    x = rng.standard_normal((t, b, h)).astype(np.float32)
    g = rng.standard_normal((t, b, h)).astype(np.float32)
    peaks = {}
    for watch in (True, False):
        if not watch:
            state_grads.WATCH_MIN_BYTES, saved = 1 << 40, state_grads.WATCH_MIN_BYTES
        try:
            seq = nn.Sequencer(nn.FastLSTM(h, h)).astype("float32")
            seq.set_plan_options(PlanOptions(backend="numpy"))
            real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
            report = seq.compile_report().peak_bytes
        finally:
            if not watch:
                state_grads.WATCH_MIN_BYTES = saved
        assert abs(real - report) <= 0.1 * report, (watch, real, report)
        peaks[watch] = real
    assert peaks[False] - peaks[True] >= 0.9 * x.nbytes, peaks
