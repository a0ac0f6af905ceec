"""The steady path's whole-program runners make an out per call only where the last call's
array is still held (issue 19, htiny9: numba_program.runner's `reuse`, by reference count): a
dropped output, grad_input or final state is written again, while anything a caller keeps --
the array, a view of it (a view holds its base), a memoryview, the Torch7 fields, a remembered
state the next call reads -- keeps its values; an array changed in place (its shape, its dtype)
is never passed to the kernel again. Values: the NumPy equations (float64, 1e-12) and bit for
bit the general path."""

import weakref

import numpy as np
import pytest
from cell_reference import fastlstm_step, run

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_available
from tapernn.backends.numba_program import reused_count
from tapernn.nn import runtime

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
T, B, D, H = 5, 1, 3, 4


def model(dtype=np.float64):
    tn.manual_seed(4)
    seq = nn.Sequencer(nn.FastLSTM(D, H)).astype(dtype)
    seq.set_plan_options(tn.PlanOptions(backend="numba"))
    return seq


def data(k, dtype=np.float64):
    r = np.random.default_rng(k)
    x = r.standard_normal((T, B, D)).astype(dtype)
    return x, r.standard_normal((T, B, H)).astype(dtype)


def step(seq, x, g):
    y = seq.forward(x)
    seq.zero_grad_parameters()
    return y, seq.backward(x, g)


def warm(seq, planned=True):
    for k in range(3):
        step(seq, *data(k, seq.module.i2g.weight.dtype))
    assert (seq._runtime.steady is not None) == planned


def want(seq, x):
    p = {k: q.data.astype(np.float64) for k, q in seq.module.named_parameters().items()}
    return run(fastlstm_step, p, x, 2, H)[0]


def test_the_count_is_measured_on_these_lines():
    base = reused_count()
    assert base is not None and base >= 1  # (CPython, with the GIL)


def test_dropped_outputs_are_written_again():
    seq = model()
    warm(seq)
    y, gx = step(seq, *data(0))
    alive = weakref.ref(y), weakref.ref(gx)
    del y, gx
    for k in range(1, 4):
        x, g = data(k)
        y, gx = step(seq, x, g)
        assert alive[0]() is y and alive[1]() is gx  # (the same two arrays every step)
        np.testing.assert_allclose(y, want(seq, x), rtol=1e-12, atol=1e-12)
        del y, gx


@pytest.mark.parametrize("hold", ["array", "view", "memoryview", "field", "state"])
def test_whatever_a_caller_holds_keeps_its_values(hold):
    seq = model()
    warm(seq)
    kept = []
    for k in range(4):
        x, g = data(k)
        y, gx = step(seq, x, g)
        if hold == "array":
            kept.append((x, y, y.copy()))
        elif hold == "view":
            kept.append((x, y[-1], y[-1].copy()))
        elif hold == "memoryview":
            m = memoryview(y)
            kept.append((x, m, y.copy()))
        elif hold == "field":
            kept.append((x, seq.module.outputs[-1], seq.module.outputs[-1].copy()))
        else:
            _, c = seq.module.get_hidden_state(-1)
            kept.append((x, c, c.copy()))
        del y, gx
    for x, held, copy in kept:
        assert np.array_equal(np.asarray(held), copy)  # not written by a later step
    x, held, copy = kept[-1]
    if hold == "array":
        np.testing.assert_allclose(held, want(seq, x), rtol=1e-12, atol=1e-12)


def test_an_array_changed_in_place_is_not_written_again():
    seq = model()
    warm(seq)
    x, g = data(5)
    y, _ = step(seq, x, g)
    y.shape = (T * B * H,)  # (the caller's to change; then dropped)
    alive = weakref.ref(y)
    del y
    y2, _ = step(seq, x, g)
    assert y2.shape == (T, B, H) and alive() is not y2
    np.testing.assert_allclose(y2, want(seq, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_remembered_states_and_steps_equal_the_general_path(dtype, monkeypatch):
    """remember("both"): the final states the kernel wrote are the next call's inputs (held by
    the call's arguments: never its out arrays); outputs and gradients bit for bit those of
    a model whose every call takes the general path."""

    def steps(seq, planned=True):
        seq.remember("both")
        warm(seq, planned)
        out = []
        for k in range(5):
            x, g = data(k, dtype)
            y, gx = step(seq, x, g)
            grads = [p.grad.copy() for p in seq.parameters()]
            out.append((y.copy(), gx.copy(), grads, [s.copy() for s in seq.module._state]))
            del y, gx
        return out

    fast = steps(model(dtype))
    monkeypatch.setattr(runtime, "plan", lambda *a, **k: None)
    slow_seq = model(dtype)
    slow = steps(slow_seq, planned=False)
    assert slow_seq._runtime.steady is None
    for (ya, ga, pa, sa), (yb, gb, pb, sb) in zip(fast, slow, strict=True):
        assert np.array_equal(ya, yb) and np.array_equal(ga, gb)
        assert all(np.array_equal(p, q) for p, q in zip(pa, pb, strict=True))
        assert all(np.array_equal(p, q) for p, q in zip(sa, sb, strict=True))


def _random_steps(cell, dtype, seed, n=16):
    """`n` random steady-looking steps (two inputs, remember toggled, outputs / views /
    grad_input kept or dropped, zero_grad or accumulation, need_grad_input either way,
    get_grad_hidden_state, updates): every value seen, and the kept arrays unchanged."""
    rng = np.random.default_rng(seed)
    tn.manual_seed(2)
    seq = nn.Sequencer(getattr(nn, cell)(D, H)).astype(dtype)
    seq.set_plan_options(tn.PlanOptions(backend="numba"))
    xs = [rng.standard_normal((T, B, D)).astype(dtype) for _ in range(2)]
    gs = [rng.standard_normal((T, B, H)).astype(dtype) for _ in range(2)]
    held, seen = [], []
    for _ in range(n):
        k = int(rng.integers(2))
        if rng.random() < 0.1:
            seq.remember(["both", "neither"][int(rng.integers(2))])
        y = seq.forward(xs[k])
        if rng.random() < 0.3:
            held.append((y, y.copy()))
        if rng.random() < 0.2:
            held.append((y[-1], y[-1].copy()))
        if rng.random() < 0.7:
            seq.zero_grad_parameters()
        gx = seq.backward(xs[k], gs[k], need_grad_input=bool(rng.random() < 0.7))
        if gx is not None and rng.random() < 0.3:
            held.append((gx, gx.copy()))
        seen += [y.copy(), None if gx is None else gx.copy()]
        seen += [p.grad.copy() for p in seq.parameters()]
        if rng.random() < 0.2:
            seen += [np.array(a) for a in seq.module.get_grad_hidden_state(-2)]
        if rng.random() < 0.5:
            seq.update_parameters(0.01)
        del y, gx
    for a, copy in held:
        assert np.array_equal(a, copy)  # (never written by a later step)
    return seen, seq._runtime.steady is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM", "GRU"])
def test_random_steps_equal_the_general_path(cell, dtype, monkeypatch):
    fast, planned = _random_steps(cell, dtype, seed=7)
    monkeypatch.setattr(runtime, "plan", lambda *a, **k: None)
    slow, general = _random_steps(cell, dtype, seed=7)
    assert planned and not general
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
