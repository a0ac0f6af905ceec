"""The rest of the Element-RNN toolbox: bidirectional, Repeater, Recursor, masking, lengths,
hidden-state handoff, rho and constant-memory evaluation."""

import tracemalloc

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.testing import gradcheck_module

D, H = 3, 4
R = np.random.default_rng(0)


def copy_params(src, dst):
    dst.load_state_dict(src.state_dict())
    return dst


def test_bisequencer_is_forward_plus_reversed_sequencers():
    tn.manual_seed(0)
    fwd, bwd = nn.LSTM(D, H), nn.LSTM(D, H)
    bi = nn.BiSequencer(fwd, bwd)
    x, g = R.standard_normal((5, 2, D)), R.standard_normal((5, 2, 2 * H))
    out = bi.forward(x)
    gx = bi.backward(x, g)
    f_seq = nn.Sequencer(copy_params(fwd, nn.LSTM(D, H)))
    b_seq = nn.Sequencer(copy_params(bwd, nn.LSTM(D, H)))
    f = f_seq.forward(x)
    b = b_seq.forward(x[::-1])[::-1]
    np.testing.assert_allclose(out, np.concatenate([f, b], -1), rtol=1e-13)
    gf = f_seq.backward(x, g[..., :H])
    gb = b_seq.backward(x[::-1], np.ascontiguousarray(g[::-1, :, H:]))[::-1]
    np.testing.assert_allclose(gx, gf + gb, rtol=1e-11, atol=1e-14)
    crit = nn.MSECriterion()
    assert gradcheck_module(bi, crit, x[:3], R.standard_normal((3, 2, 2 * H)), max_entries=12)


def test_bisequencer_clones_fresh_parameters_and_sums_with_caddtable():
    tn.manual_seed(0)
    fwd = nn.GRU(D, H)
    bi = nn.BiSequencer(fwd, merge=nn.CAddTable())
    assert bi.get_child if False else True
    params = bi.named_parameters()
    assert "bwd.w_xr" in params and not np.allclose(params["bwd.w_xr"].data, fwd.w_xr.data)
    assert bi.forward([R.standard_normal((2, D))] * 3)[0].shape == (2, H)


def test_bisequencer_lm_padding_and_gradients():
    tn.manual_seed(0)
    lm = nn.BiSequencerLM(nn.RNN(D, H), nn.RNN(D, H))
    x = R.standard_normal((4, 2, D))
    out = lm.forward(x)
    assert out.shape == (4, 2, 2 * H)
    np.testing.assert_array_equal(out[0, :, :H], 0)  # no past at step 0
    np.testing.assert_array_equal(out[-1, :, H:], 0)  # no future at the last step
    f = nn.Sequencer(copy_params(lm.get_fwd(), nn.RNN(D, H))) if hasattr(lm, "get_fwd") else None
    fwd_only = nn.Sequencer(copy_params(lm._children["fwd"], nn.RNN(D, H))).forward(x[:3])
    np.testing.assert_allclose(out[1:, :, :H], fwd_only, rtol=1e-13)
    g = lm.backward(x, np.ones_like(out))
    assert g.shape == x.shape and f is None
    assert gradcheck_module(lm, nn.MSECriterion(), x, R.standard_normal(out.shape), max_entries=10)


def test_repeater_and_repeater_criterion():
    tn.manual_seed(0)
    cell = nn.RNN(D, H)
    rep = nn.Repeater(cell, 3)
    x = R.standard_normal((2, D))
    out = rep.forward(x)
    seq = nn.Sequencer(copy_params(cell, nn.RNN(D, H)))
    ref = seq.forward([x, x, x])
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    g = [R.standard_normal((2, H)) for _ in range(3)]
    gi = rep.backward(x, g)
    np.testing.assert_allclose(gi, sum(seq.backward([x, x, x], g)), rtol=1e-12)
    np.testing.assert_allclose(rep.forward(x)[0], out[0])  # forgets before every forward
    crit = nn.RepeaterCriterion(nn.MSECriterion())
    y = R.standard_normal((2, H))
    assert np.isclose(crit.forward(out, y), sum(nn.MSECriterion().forward(o, y) for o in out))


def test_recursor_steps_any_module_with_bptt():
    tn.manual_seed(0)
    inner = nn.Sequential(nn.Linear(D, H), nn.Tanh())
    rec = nn.Recursor(inner)
    xs = R.standard_normal((3, 2, D))
    outs = [rec.forward(x) for x in xs]
    assert len(rec.outputs) == 3 and rec.step == 3
    inner.zero_grad_parameters()
    grads = [rec.backward(xs[t], np.ones((2, H))) for t in (2, 1, 0)]
    ref = nn.Sequencer(copy_params(inner, nn.Sequential(nn.Linear(D, H), nn.Tanh())))
    np.testing.assert_allclose(np.stack(outs), ref.forward(xs), rtol=1e-13)
    ref.zero_grad_parameters()
    ref_g = ref.backward(xs, np.ones((3, 2, H)))
    np.testing.assert_allclose(grads[0], ref_g[2], rtol=1e-13)
    np.testing.assert_allclose(inner.get(0).weight.grad, ref.parameters()[0].grad, rtol=1e-12)
    lstm_rec = nn.Recursor(nn.LSTM(D, H))
    with pytest.raises(tn.StateError, match="reverse order"):
        lstm_rec.forward(xs[0])
        lstm_rec.forward(xs[1])
        lstm_rec.backward(xs[0], np.ones((2, H)))


@pytest.mark.parametrize(
    "make", [lambda: nn.LSTM(D, H), lambda: nn.GRU(D, H), lambda: nn.FastLSTM(D, H)]
)
def test_mask_zero_left_padded_prefixes(make):
    tn.manual_seed(0)
    seq = nn.Sequencer(make().mask_zero())
    T = 4
    full = R.standard_normal((T, D))
    x = np.zeros((T, T, D))  # row k: the last k+1 elements of `full`... left-padded
    for k in range(T):
        n = k + 1
        x[T - n :, k] = full[:n]
    out = seq.forward(x)
    for k in range(T):
        n = k + 1
        np.testing.assert_array_equal(out[: T - n, k], 0)
        np.testing.assert_allclose(out[T - n :, k], out[:n, T - 1], rtol=1e-12, atol=1e-15)


def test_recurrent_rejects_mask_zero():
    with pytest.raises(TypeError):
        nn.Recurrent(H, nn.Linear(D, H), nn.Linear(H, H)).mask_zero()


def test_lengths_equal_running_each_sequence_alone():
    tn.manual_seed(0)
    cell = nn.LSTM(D, H)
    seq = nn.Sequencer(cell)
    T, lengths = 5, np.array([5, 2, 3])
    x = R.standard_normal((T, 3, D))
    g = R.standard_normal((T, 3, H))
    out = seq.forward(x, lengths=lengths)
    seq.zero_grad_parameters()
    gx = seq.backward(x, g)
    final_h = cell.get_hidden_state(-1)[0]
    total = {k: np.zeros_like(p.data) for k, p in cell.named_parameters().items()}
    for b, n in enumerate(lengths):
        alone = nn.Sequencer(copy_params(cell, nn.LSTM(D, H)))
        o = alone.forward(x[:n, b : b + 1])
        np.testing.assert_allclose(out[:n, b : b + 1], o, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(out[n:, b], 0)
        np.testing.assert_allclose(final_h[b], o[-1, 0], rtol=1e-12)
        alone.zero_grad_parameters()
        gi = alone.backward(x[:n, b : b + 1], g[:n, b : b + 1])
        np.testing.assert_allclose(gx[:n, b : b + 1], gi, rtol=1e-11, atol=1e-14)
        np.testing.assert_array_equal(gx[n:, b], 0)
        for k, p in alone.get(0).named_parameters().items():
            total[k] += p.grad
    for k, p in cell.named_parameters().items():
        np.testing.assert_allclose(p.grad, total[k], rtol=1e-11, atol=1e-13, err_msg=k)
    with pytest.raises(tn.ValueRangeError):
        seq.forward(x, lengths=np.array([6, 1, 1]))


def test_mask_zero_criterion_and_lookup_table_mask_zero():
    x = np.log(R.dirichlet(np.ones(3), size=4))
    x[3] = 0.0
    t = np.array([0, 2, 1, 1])
    crit = nn.MaskZeroCriterion(nn.ClassNLLCriterion())
    assert np.isclose(crit.forward(x, t), nn.ClassNLLCriterion().forward(x[:3], t[:3]), rtol=1e-13)
    g = crit.backward(x, t)
    np.testing.assert_array_equal(g[3], 0)
    np.testing.assert_allclose(g[:3], nn.ClassNLLCriterion().backward(x[:3], t[:3]), rtol=1e-13)
    assert crit.forward(np.zeros((2, 3)), np.array([0, 1])) == 0.0
    np.testing.assert_array_equal(crit.backward(np.zeros((2, 3)), np.array([0, 1])), 0)
    mse = nn.MaskZeroCriterion(nn.MSECriterion())
    y = R.standard_normal((4, 3))
    assert np.isclose(mse.forward(x, y), nn.MSECriterion().forward(x[:3], y[:3]))
    lt = nn.LookupTableMaskZero(5, 2)
    ids = np.array([[0, 1], [5, 0]])
    out = lt.forward(ids)
    np.testing.assert_array_equal(out[0, 0], 0)
    np.testing.assert_allclose(out[1, 0], lt.weight.data[5])
    lt.zero_grad_parameters()
    lt.backward(ids, np.ones((2, 2, 2)))
    np.testing.assert_array_equal(lt.weight.grad[0], 0)


def test_encoder_decoder_handoff_gradcheck():
    tn.manual_seed(0)
    enc, dec = nn.LSTM(D, H), nn.LSTM(D, H)
    enc_seq, dec_seq = nn.Sequencer(enc), nn.Sequencer(dec)
    head, crit = nn.Sequencer(nn.Linear(H, 2)), nn.MSECriterion()
    xe, xd, y = (
        R.standard_normal((3, 2, D)),
        R.standard_normal((2, 2, D)),
        R.standard_normal((2, 2, 2)),
    )

    def loss_and_grads():
        enc_seq.forward(xe)
        dec.set_initial_state(enc.get_hidden_state(-1))
        out = head.forward(dec_seq.forward(xd))
        loss = crit.forward(out, y)
        g = dec_seq.backward(xd, head.backward(dec_seq.output, crit.backward(out, y)))
        enc.set_grad_hidden_state(-1, dec.get_grad_initial_state())
        enc_seq.backward(xe, np.zeros((3, 2, H)))
        return loss, g

    for m in (enc, dec, head):
        m.zero_grad_parameters()
    loss_and_grads()
    analytic_grads = {
        (id(m), k): p.grad.copy() for m in (enc, dec) for k, p in m.named_parameters().items()
    }
    assert np.abs(analytic_grads[(id(enc), "w_xi")]).sum() > 0  # the handoff carried a gradient
    eps = 1e-6
    for module in (enc, dec):
        for name, p in module.named_parameters().items():
            for idx in list(np.ndindex(p.shape))[:4]:
                analytic = analytic_grads[(id(module), name)][idx]
                orig = p.data[idx]
                p.data[idx] = orig + eps
                up = loss_and_grads()[0]
                p.data[idx] = orig - eps
                down = loss_and_grads()[0]
                p.data[idx] = orig
                numeric = (up - down) / (2 * eps)
                assert abs(analytic - numeric) <= 1e-6 + 1e-4 * abs(numeric), (name, idx)


def test_rho_bounds_stepwise_history():
    lstm = nn.LSTM(D, H).max_bptt_step(3)
    xs = R.standard_normal((6, D))
    for x in xs:
        lstm.forward(x)
    # dropped steps keep their places: outputs[t] is step t or None, never another step
    assert len(lstm.outputs) == 6 and lstm.step == 6
    assert lstm.outputs[:3] == [None] * 3 and lstm.inputs[:3] == [None] * 3
    assert lstm.cells[2] is None and lstm.cells[3] is not None
    np.testing.assert_array_equal(lstm.get_hidden_state(3)[0], lstm.outputs[3])
    with pytest.raises(tn.StateError, match="step 0 was dropped"):
        lstm.get_hidden_state(0)
    np.testing.assert_array_equal(lstm.inputs[5], xs[5])
    assert len(lstm._runtime.history) == 3
    for t in (5, 4, 3):
        lstm.backward(xs[t], np.ones(H))
    with pytest.raises(tn.StateError, match="rho"):
        lstm.backward(xs[2], np.ones(H))


def test_evaluate_stepping_keeps_memory_flat():
    tn.manual_seed(0)
    lstm = nn.LSTM(8, 16).evaluate()
    x = np.ones(8)
    for _ in range(50):
        lstm.forward(x)
    tracemalloc.start()
    for _ in range(2000):
        lstm.forward(x)
    mid = tracemalloc.get_traced_memory()[0]
    for _ in range(8000):
        lstm.forward(x)
    end = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert lstm.step == 10050 and len(lstm.outputs) == 1
    assert end - mid < 64 * 1024, f"memory grew by {end - mid} bytes over 8000 steps"


def test_torch_recurrent_module_matches_its_equations():
    tn.manual_seed(0)
    rec = nn.Recurrent(H, nn.Linear(D, H), nn.Linear(H, H), nn.Tanh())
    xs = R.standard_normal((4, 2, D))
    out = nn.Sequencer(rec).forward(xs)
    W_in, b_in = rec._children["input"].weight.data, rec._children["input"].bias.data
    W_fb, b_fb = rec._children["feedback"].weight.data, rec._children["feedback"].bias.data
    h = np.tanh(xs[0] @ W_in.T + b_in + rec.start.data)  # step 0: the start bias
    expected = [h]
    for x in xs[1:]:
        h = np.tanh(x @ W_in.T + b_in + h @ W_fb.T + b_fb)  # later steps: merge(input, feedback)
        expected.append(h)
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-13)
    assert gradcheck_module(
        nn.Sequencer(rec), nn.MSECriterion(), xs, R.standard_normal((4, 2, H)), max_entries=10
    )


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("t", [1, -1])
def test_set_grad_hidden_state_stepwise_equals_the_sequencer(cell, t):
    """The set state gradient reaches step t whether the module is stepped by hand (its
    backward of step t seeds the final state with it) or unrolled by a Sequencer, and in both it
    REPLACES what step t + 1 sends back (t = 1: an earlier step; t = -1: the last, where nothing
    comes from later steps). tests/test_hidden_state_api.py checks the replacing itself."""
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((4, 2, D)), rng.standard_normal((4, 2, H))
    extra = tuple(rng.standard_normal((2, H)) for _ in cell(D, H).state_names)

    def grads(stepwise, with_extra=True):
        tn.manual_seed(0)
        m = cell(D, H)
        runner = m if stepwise else nn.Sequencer(m)
        if stepwise:
            for k in range(4):
                m.forward(x[k])
        else:
            runner.forward(x)
        m.zero_grad_parameters()
        if with_extra:
            m.set_grad_hidden_state(t, extra)
        if stepwise:
            gx = [m.backward(x[k], g[k]) for k in reversed(range(4))][::-1]
        else:
            gx = list(runner.backward(x, g))
        return [p.grad.copy() for p in m.parameters()] + gx

    for a, b in zip(grads(True), grads(False)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert max(np.abs(a - b).max() for a, b in zip(grads(True), grads(True, False))) > 1e-3


def test_set_grad_hidden_state_past_the_last_step_is_reported_once():
    m = nn.GRU(D, H)
    x = np.ones((2, 1, D))
    for k in range(2):
        m.forward(x[k])
    m.set_grad_hidden_state(2, np.ones((1, H)))
    with pytest.raises(tn.StateError, match=r"set_grad_hidden_state\(2\) but 2 steps"):
        m.backward(x[1], np.ones((1, H)))
    m.backward(x[1], np.ones((1, H)))  # the bad request is gone; BPTT goes on
    m.backward(x[0], np.ones((1, H)))


def test_stepwise_training_copes_with_one_refilled_input_buffer():
    # Torch7 copies each step's input (copyInputs): refilling one buffer per step is fine
    rng = np.random.default_rng(5)
    xs, g = rng.standard_normal((4, 2, D)), rng.standard_normal((4, 2, H))

    def grads(refill):
        tn.manual_seed(0)
        m, buf = nn.LSTM(D, H), np.empty((2, D))
        for t in range(4):
            if refill:
                buf[...] = xs[t]
                m.forward(buf)
            else:
                m.forward(xs[t].copy())
        np.testing.assert_array_equal(m.inputs[0], xs[0])
        m.zero_grad_parameters()
        gx = [m.backward(xs[t], g[t]) for t in reversed(range(4))]
        return [p.grad.copy() for p in m.parameters()] + gx

    for a, b in zip(grads(True), grads(False)):
        np.testing.assert_array_equal(a, b)
