"""get_grad_hidden_state's fingerprints shared with own_threads' worker (issue 19, branch
hserial): a plain Sequencer backward's tap_copies hands the idle worker the held arrays'
fingerprints while it copies, then takes those the worker has not begun itself
(tap_digest.copy_and_digest: a late worker no longer holds the caller up). Equivalence: the
copies are the arguments' bytes, the fingerprints those taken here, and the state gradients
(float64, complex-step NumPy equations, 1e-12) are the backward's after an update, whichever
thread digested; an input changed in place still raises. Structure: the worker took
fingerprints (tap_digest.SHARED) while the caller was busy with one (made slow here), from
APART_BYTES on; none below it."""

import threading
import time

import numpy as np
import pytest

from tapernn import PlanOptions, nn, own_threads
from tapernn.errors import StateError
from tapernn.nn import state_grads, tap_digest
from tests import cell_reference as ref

H, T, B = 8, 4, 4  # (the gate rows hold both weights and the bias; not the input or gradient)


@pytest.fixture
def worker(monkeypatch):
    """The worker there and idle (an owned call would have made it), arrays of any size
    watched (the tests' shapes are small)."""
    own_threads.executor()
    if not own_threads.idle_worker():
        pytest.skip("one CPU or a one-thread BLAS policy: no worker is handed anything")
    monkeypatch.setattr(state_grads, "WATCH_MIN_BYTES", 0)
    caller, real = threading.get_ident(), tap_digest.fingerprint

    def slow_here(a, *kind):  # (the caller slow: the worker, awake by then, takes the rest)
        if threading.get_ident() == caller:
            time.sleep(0.05)
        return real(a, *kind)

    monkeypatch.setattr(tap_digest, "fingerprint", slow_here)


def test_shared_copies_are_the_arrays_bytes_and_fingerprints_as_here(worker, monkeypatch):
    """tap_copies of five arrays, three placed in a room, two held: with APART_BYTES 0 the
    worker takes a fingerprint (SHARED counts it) while the caller takes the other; every copy equals its array
    bit for bit, none shares memory with it, and the fingerprints are those taken here -- the
    same result as with APART_BYTES 2**40 (all on the caller)."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((64, 32), (16,), (64, 32))]
    arrays += [rng.standard_normal((30, 20)), rng.standard_normal((30, 20))]
    placed = sum(a.nbytes for a in arrays[:3])
    results = {}
    for apart in (0, 1 << 40):
        monkeypatch.setattr(tap_digest, "APART_BYTES", apart)
        room = np.zeros(placed + 256, np.uint8)
        before = tap_digest.SHARED[0]
        copies = state_grads.tap_copies(arrays, room, frozenset({3, 4}))
        assert (tap_digest.SHARED[0] > before) == (apart == 0)
        assert [k for k, _, _ in copies.watched] == [3, 4]
        assert copies[3] is arrays[3] and copies[4] is arrays[4]
        for c, a in zip(copies[:3], arrays[:3]):
            assert np.may_share_memory(c, room) and not np.may_share_memory(c, a)
            assert c.dtype == a.dtype and c.shape == a.shape
            assert c.tobytes() == a.tobytes()
        results[apart] = [fp for _, _, fp in copies.watched]
        assert results[apart] == [tap_digest.fingerprint(a) for a in arrays[3:]]
    assert results[0] == results[1 << 40]


def _model():
    m = nn.FastLSTM(H, H)
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(k).standard_normal(p.shape) * 0.3
    return m


def _want(params, x, g, t):
    return ref.complex_step_state_grads(ref.fastlstm_step, params, x, g, t, H)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_state_gradients_after_an_update_with_shared_copies(worker, monkeypatch, backend):
    """Three loop steps (the general path, then the steady one) with APART_BYTES 0: the worker
    takes a fingerprint each backward; read after update_parameters, the state
    gradients are the NumPy equations' of what the backward saw; the input changed in place
    raises StateError."""
    monkeypatch.setattr(tap_digest, "APART_BYTES", 0)
    m = _model()
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(tap_room_min_bytes=0, backend=backend))
    rng = np.random.default_rng(1)
    for _ in range(3):
        x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
        params = {name: p.data.copy() for name, p in m.named_parameters().items()}
        before = tap_digest.SHARED[0]
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)
        assert tap_digest.SHARED[0] > before
        seq.update_parameters(0.5)
        for t in (0, 2):
            for got, w in zip(m.get_grad_hidden_state(t), _want(params, x, g, t)):
                np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
    seq.forward(x)
    seq.backward(x, g)
    x[0, 0, 0] += 1.0
    with pytest.raises(StateError, match="input"):
        m.get_grad_hidden_state(1)
