"""The steady-state fast path of a module call (nn.steady, issue 19): a call with the last call's
signature skips the general path (no signature, seed building or record checks), and every
semantic stays: values against hand-written NumPy equations (float64, 1e-12), a change of shape,
dtype, mode, remember state or backend taking the general path, Torch7 fields, accumulation,
need_grad_input, set/get_grad_hidden_state, dropout masks drawn per call, errors on bad input."""

import copy

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step

import tapernn as tn
from tapernn import nn
from tapernn.errors import ShapeError, StateError, TapernnError
from tapernn.nn import runtime

T, B, D, H = 5, 2, 3, 4


def params_of(m):
    return {k: p.data.astype(np.float64) for k, p in m.named_parameters().items()}


def equations(cell, x, seed, h0=None, c0=None):
    """Outputs, final (h, c), and exact gradients (complex step) of sum(seed * outputs)."""
    p = params_of(cell)
    h = np.zeros((x.shape[1], H)) if h0 is None else h0
    c = np.zeros((x.shape[1], H)) if c0 is None else c0
    outs = []
    for xt in x:
        h, c = fastlstm_step(p, xt, h, c)
        outs.append(h)
    grads = None
    if h0 is None and seed is not None:
        grads = complex_step_grads(fastlstm_step, p, x, 2, H, seed)
    return np.stack(outs), (h, c), grads


def check_step(seq, x, g, reference_cell=None, rtol=1e-12):
    """One training step of `seq`, checked against the equations (from zero states)."""
    cell = reference_cell or seq.module
    want, _, exact = equations(cell, x, g)
    y = seq.forward(x)
    seq.zero_grad_parameters()
    gx = seq.backward(x, g)
    np.testing.assert_allclose(y, want, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(gx, exact["input"], rtol=rtol, atol=rtol)
    for name, p in seq.module.named_parameters().items():
        np.testing.assert_allclose(p.grad, exact[name], rtol=rtol, atol=rtol, err_msg=name)
    return y, gx


def count_general(monkeypatch):
    """Calls of the general forward path (Runtime.slow_forward), as a list that grows."""
    calls = []
    slow = runtime.Runtime.slow_forward

    def counted(self, *a, **k):
        calls.append(1)
        return slow(self, *a, **k)

    monkeypatch.setattr(runtime.Runtime, "slow_forward", counted)
    return calls


def forbid_general(monkeypatch):
    """The general path's per-call derivations raise if they run."""

    def fail(*a, **k):
        raise AssertionError("the general path ran on a steady call")

    monkeypatch.setattr(runtime.Runtime, "_signature", fail)
    monkeypatch.setattr(runtime.Runtime, "_seeds", fail)
    monkeypatch.setattr(runtime.Runtime, "_next_record", fail)
    monkeypatch.setattr(runtime, "record_for_input", fail)


def model(unroll=None):
    tn.manual_seed(3)
    return nn.Sequencer(nn.FastLSTM(D, H), unroll=unroll)


def data(k, t=T, b=B, dtype=np.float64):
    r = np.random.default_rng(k)
    return r.standard_normal((t, b, D)).astype(dtype), r.standard_normal((t, b, H)).astype(dtype)


@pytest.mark.parametrize("unroll", [None, True])
def test_a_steady_call_skips_the_general_path(backend, unroll, monkeypatch):
    seq = model(unroll)
    x, g = data(0)
    check_step(seq, x, g)
    check_step(seq, x, g)
    forbid_general(monkeypatch)
    for k in (1, 2):  # new values in arrays of the same signature
        x2, g2 = data(k)
        check_step(seq, x2, g2)
        seq.update_parameters(0.1)  # in place: the same arrays, new values
    assert seq._runtime.steady is not None


def test_a_change_of_signature_takes_the_general_path(backend, monkeypatch):
    seq = model()
    general = count_general(monkeypatch)
    x, g = data(0)
    check_step(seq, x, g)
    check_step(seq, x, g)
    assert len(general) == 1
    for t, b in ((3, B), (3, 1), (T, B)):  # another length, batch, and back
        x2, g2 = data(t + b, t, b)
        check_step(seq, x2, g2)
        check_step(seq, x2, g2)
    assert len(general) == 4
    # training flag: evaluation forward, then training again
    seq.evaluate()
    want, _, _ = equations(seq.module, x, None)
    np.testing.assert_allclose(seq.forward(x), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(seq.forward(x), want, rtol=1e-12, atol=1e-12)
    seq.training()
    check_step(seq, x, g)
    assert len(general) == 6
    # the input's dtype: float32 data is converted to the model's float64 (the general path)
    y = seq.forward(x.astype(np.float32))
    np.testing.assert_allclose(y, equations(seq.module, x.astype(np.float32), None)[0], 1e-12)
    assert len(general) == 7
    # the backend: other plan options compile again
    other = "numpy" if backend == "numba" else "numba"
    if other == "numba":
        pytest.importorskip("numba")
    seq.set_plan_options(tn.PlanOptions(backend=other))
    check_step(seq, x, g)
    check_step(seq, x, g)
    assert len(general) == 8
    # the model's dtype
    seq.float()
    x32, g32 = x.astype(np.float32), g.astype(np.float32)
    check_step(seq, x32, g32, rtol=2e-5)
    check_step(seq, x32, g32, rtol=2e-5)
    assert len(general) == 9


def test_remember_continues_from_the_last_state(backend, monkeypatch):
    seq = model().remember("both")
    general = count_general(monkeypatch)
    x, _ = data(0)
    h = c = None
    for k in range(3):
        want, (h, c), _ = equations(seq.module, x, None, h, c)
        np.testing.assert_allclose(seq.forward(x), want, rtol=1e-12, atol=1e-12)
    assert len(general) == 2  # from zeros, then from a remembered state (steady after)
    seq.forget()
    want, _, _ = equations(seq.module, x, None)
    np.testing.assert_allclose(seq.forward(x), want, rtol=1e-12, atol=1e-12)
    assert len(general) == 3
    seq.remember("neither")
    check_step(seq, x, data(0)[1])


def test_torch7_fields_and_accumulation_on_the_steady_path(backend):
    seq, fresh = model(), model()
    x, g = data(0)
    seq.forward(x)
    seq.backward(x, g)  # warm: the next calls are steady
    x2, g2 = data(1)
    kept = seq.forward(x)
    before = kept.copy()
    y = seq.forward(x2)
    np.testing.assert_array_equal(kept, before)  # the caller's: the next call leaves it alone
    np.testing.assert_allclose(kept, equations(seq.module, x, None)[0], rtol=1e-12, atol=1e-13)
    seq.zero_grad_parameters()
    gx = seq.backward(x2, g2)
    y2 = seq.forward(x2)
    assert seq.backward(x2, g2, need_grad_input=False) is None
    assert seq.grad_input is None
    np.testing.assert_array_equal(y, y2)
    yf = fresh.forward(x2)
    fresh.zero_grad_parameters()
    gxf = fresh.backward(x2, g2)
    fresh.backward(x2, g2)  # accumulated twice, as the steady model's
    assert seq.output is y2 and gx is not None
    np.testing.assert_array_equal(y, yf)
    np.testing.assert_array_equal(gx, gxf)
    for p, q in zip(seq.parameters(), fresh.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-13)
    a, b = seq.module, fresh.module
    assert int(a.step) == int(b.step) == T
    for field in ("outputs", "inputs"):
        assert len(getattr(a, field)) == T
        for u, v in zip(getattr(a, field), getattr(b, field)):
            np.testing.assert_array_equal(u, v)
    for name in a.state_names:
        for u, v in zip(a.states[name], b.states[name]):
            np.testing.assert_array_equal(u, v)
    for t in (0, 2, -1):
        for u, v in zip(a.get_hidden_state(t), b.get_hidden_state(t)):
            np.testing.assert_array_equal(u, v)


def test_grad_hidden_state_on_the_steady_path(backend):
    seq, fresh = model(), model()
    x, g = data(0)
    seq.forward(x)
    seq.backward(x, g)
    x2, g2 = data(1)
    seq.forward(x2)
    seq.backward(x2, g2)  # steady
    seq.update_parameters(0.5)  # after backward: get_grad_hidden_state sees the backward's values
    fresh.forward(x2)
    fresh.backward(x2, g2)
    for t in (0, 3):
        for u, v in zip(seq.module.get_grad_hidden_state(t), fresh.module.get_grad_hidden_state(t)):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)
    # a set_grad_hidden_state pending: the general path, as a fresh model's
    twin = copy.deepcopy(seq)
    fresh2 = copy.deepcopy(seq)
    fresh2._runtime = None
    fresh2.module._runtime = None
    hs = (np.ones((B, H)), np.full((B, H), 0.5))
    for m in (twin, fresh2):
        m.forward(x2)
        m.module.set_grad_hidden_state(2, hs)
        m.zero_grad_parameters()
        m.backward(x2, g2)
    np.testing.assert_allclose(twin.grad_input, fresh2.grad_input, rtol=1e-12, atol=1e-13)
    for p, q in zip(twin.parameters(), fresh2.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-13)


def test_dropout_masks_are_drawn_per_steady_call(backend):
    tn.manual_seed(4)
    seq = nn.Sequencer(nn.Sequential(nn.FastLSTM(D, H), nn.Dropout(0.5)))
    start = copy.deepcopy(seq)
    x, g = data(0)
    got = []
    for k in range(4):
        tn.manual_seed(100 + k)
        got.append((seq.forward(x).copy(), seq.backward(x, g).copy()))
    assert not np.array_equal(got[2][0], got[3][0])  # fresh masks each call
    for k in (2, 3):  # a first call (general path) with the same random draws
        ref = copy.deepcopy(start)
        tn.manual_seed(100 + k)
        np.testing.assert_array_equal(ref.forward(x), got[k][0])
        np.testing.assert_array_equal(ref.backward(x, g), got[k][1])


def test_bad_inputs_on_a_steady_call_raise(backend):
    seq = model()
    x, g = data(0)
    for _ in range(2):
        seq.forward(x)
        seq.backward(x, g)
    seq.forward(x)
    with pytest.raises(ShapeError, match="grad_output 0 has shape"):
        seq.backward(x, g[:, :, :2])
    with pytest.raises(TapernnError):
        seq.backward(x, np.array([["a"] * H] * B * T).reshape(T, B, H))
    with pytest.raises(ShapeError, match="backward input has shape"):
        seq.backward(x[:, :1], g)
    with pytest.raises(ShapeError):
        seq.forward(np.ones((T, B, D + 1)))
    with pytest.raises(TapernnError):
        seq.forward(np.full((T, B, D), "x"))
    seq.forward(x)
    seq.backward(x, g)
    seq.forward(x)  # steady again after the errors
    seq.forget()
    with pytest.raises(StateError, match="backward called before forward"):
        seq.backward(x, g)
    check_step(seq, x, g)


def test_initial_state_and_mask_zero_changes_take_the_general_path(backend, monkeypatch):
    seq = model()
    general = count_general(monkeypatch)
    x, g = data(0)
    check_step(seq, x, g)
    check_step(seq, x, g)
    r = np.random.default_rng(9)
    h0, c0 = r.standard_normal((B, H)), r.standard_normal((B, H))
    seq.module.set_initial_state((h0, c0))
    for _ in range(2):  # a user-set initial state: the general path, then steady again
        want, _, _ = equations(seq.module, x, None, h0, c0)
        np.testing.assert_allclose(seq.forward(x), want, rtol=1e-12, atol=1e-12)
        seq.backward(x, g)
        assert all(np.all(np.isfinite(s)) for s in seq.module.get_grad_initial_state())
    assert len(general) == 2
    seq.forget()  # the user's initial state is dropped: zeros again
    check_step(seq, x, g)
    assert len(general) == 3
    x[1, 0] = 0.0  # an all-zero row
    fresh = model()
    fresh.module.mask_zero()
    seq.module.mask_zero()
    y = seq.forward(x)
    assert len(general) == 4
    np.testing.assert_array_equal(y[1, 0], 0.0)
    np.testing.assert_allclose(y, fresh.forward(x), rtol=1e-12, atol=1e-13)


def test_the_steady_loop_holds_no_more_than_the_general_one(monkeypatch):
    """tracemalloc peak of a steady training loop (zero, forward, backward, update) with the
    fast path and without it (nn.steady.plan patched to plan nothing): equal within 1 %."""
    from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step

    r = np.random.default_rng(0)
    x, g = r.standard_normal((10, 16, 64)), r.standard_normal((10, 16, 64))
    peaks = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(runtime, "plan", lambda *a: None)
        tn.manual_seed(1)
        seq = nn.Sequencer(nn.FastLSTM(64, 64))
        peaks.append(loop_peak_bytes(tapernn_loop_step(seq, x, g)))
        assert (seq._runtime.steady is not None) == fast
    assert abs(peaks[0] - peaks[1]) <= 0.01 * peaks[1], peaks
