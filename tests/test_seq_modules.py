"""SeqLSTM, SeqLSTMP, SeqGRU, SeqBRNN and SeqReverseSequence: NumPy equations (forward and every
gradient at 1e-10, with zero-masked rows and initial states), equivalence with the cell
modules they mirror (1e-12), gradcheck, float32, Torch7 initialisation and named errors."""

import copy

import numpy as np
import pytest
from seq_reference import complex_step_grads, seqgru, seqlstm

import tapernn as tn
from tapernn import nn
from tapernn.errors import ShapeError

T, B, D, H, R = 4, 3, 3, 4, 2


def _inputs(seed=0, masked=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, D))
    if masked:
        x[:2, 0] = 0  # row 0 left-padded for two steps
        x[1, 2] = 0  # row 2 has a zero step mid-sequence (a reset)
    return x, rng


def params_of(m):
    return {k: p.data.copy() for k, p in m.named_parameters().items()}


def _check_against_numpy(module, fn, x, states, rng):
    """forward and every gradient of `module` on [*states, x] against complex-step derivatives
    of the NumPy equations `fn(**params, x=, h0=, [c0=])`."""
    arrays = dict(params_of(module), x=x, **states)
    names = list(states)[::-1]
    inp = [states[n] for n in names] + [x] if states else x
    out = module.forward(inp)
    np.testing.assert_allclose(out, fn(**arrays), rtol=1e-12, atol=1e-14)
    seed = rng.standard_normal(out.shape)
    module.zero_grad_parameters()
    gin = module.backward(inp, seed)
    exact = complex_step_grads(fn, arrays, seed)
    gin = gin if isinstance(gin, list) else [gin]
    for name, g in zip(names + ["x"], gin):
        np.testing.assert_allclose(g, exact[name], rtol=1e-10, atol=1e-12, err_msg=name)
    for name, p in module.named_parameters().items():
        np.testing.assert_allclose(p.grad, exact[name], rtol=1e-10, atol=1e-12, err_msg=name)


def _lstm_fn(mask_zero, with_h0=True, with_c0=True):
    def fn(weight, bias, x, h0=None, c0=None, weight_o=None):
        p = {"weight": weight, "bias": bias}
        if weight_o is not None:
            p["weight_o"] = weight_o
        r = weight.shape[0] - x.shape[-1]
        h = h0 if h0 is not None else np.zeros((x.shape[1], r))
        c = c0 if c0 is not None else np.zeros((x.shape[1], bias.shape[0] // 4))
        return seqlstm(p, x, h, c, mask_zero)

    return fn


@pytest.mark.parametrize("form", ["x", "h0,x", "c0,h0,x"])
@pytest.mark.parametrize("mask_zero", [False, True])
def test_seqlstm_matches_numpy_equations(form, mask_zero):
    tn.manual_seed(1)
    m = nn.SeqLSTM(D, H, mask_zero=mask_zero)
    x, rng = _inputs(1, masked=mask_zero)
    states = {}
    if "h0" in form:
        states["h0"] = rng.standard_normal((B, H))
    if "c0" in form:
        states["c0"] = rng.standard_normal((B, H))
    _check_against_numpy(m, _lstm_fn(mask_zero), x, states, rng)


def test_seqlstmp_matches_numpy_equations():
    tn.manual_seed(2)
    m = nn.SeqLSTMP(D, H, R, mask_zero=True)
    assert m.weight.shape == (D + R, 4 * H) and m.weight_o.shape == (H, R)
    x, rng = _inputs(2)
    states = {"h0": rng.standard_normal((B, R)), "c0": rng.standard_normal((B, H))}
    _check_against_numpy(m, _lstm_fn(True), x, states, rng)
    assert m.forward(x).shape == (T, B, R)


@pytest.mark.parametrize("with_h0", [False, True])
def test_seqgru_matches_numpy_equations(with_h0):
    tn.manual_seed(3)
    m = nn.SeqGRU(D, H, mask_zero=True)
    x, rng = _inputs(3)
    states = {"h0": rng.standard_normal((B, H))} if with_h0 else {}

    def fn(weight, bias, x, h0=None):
        h = h0 if h0 is not None else np.zeros((x.shape[1], H))
        return seqgru({"weight": weight, "bias": bias}, x, h, mask_zero=True)

    _check_against_numpy(m, fn, x, states, rng)


def _grads(m):
    return {k: p.grad.copy() for k, p in m.named_parameters().items()}


def test_seqlstm_equals_sequencer_fastlstm_with_masked_rows():
    tn.manual_seed(4)
    seq = nn.SeqLSTM(D, H).mask_zero()  # (the method, as the constructor flag)
    assert seq.masks_zero
    fast = nn.Sequencer(seq.to_fast_lstm(), unroll=True)  # per-step kernels, unrolled
    x, rng = _inputs(4)
    g = rng.standard_normal((T, B, H))
    outs, gins = [], []
    for m in (seq, fast):
        m.zero_grad_parameters()
        outs.append(m.forward(x))
        gins.append(m.backward(x, g))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gins[0], gins[1], rtol=1e-12, atol=1e-14)
    assert np.all(outs[0][:2, 0] == 0)
    fg, order = _grads(fast), [0, 2, 3, 1]  # FastLSTM [i, g, f, o] blocks -> SeqLSTM [i, f, o, g]

    def back(a):
        return np.concatenate([a[k * H : (k + 1) * H] for k in order], 0)

    sg = _grads(seq)
    np.testing.assert_allclose(sg["weight"][:D], back(fg["0.i2g.weight"]).T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sg["weight"][D:], back(fg["0.o2g.weight"]).T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sg["bias"], back(fg["0.i2g.bias"]), rtol=1e-12, atol=1e-14)


def test_seqgru_equals_gru_with_masked_rows():
    tn.manual_seed(5)
    seq = nn.SeqGRU(D, H, mask_zero=True)
    gru = nn.Sequencer(seq.to_gru())
    x, rng = _inputs(5)
    g = rng.standard_normal((T, B, H))
    res = []
    for m in (seq, gru):
        m.zero_grad_parameters()
        res.append((m.forward(x), m.backward(x, g), _grads(m)))
    np.testing.assert_allclose(res[0][0], res[1][0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res[0][1], res[1][1], rtol=1e-12, atol=1e-14)
    sg, gg = res[0][2], res[1][2]
    for k, gate in enumerate("rzn"):
        cols = slice(k * H, (k + 1) * H)
        np.testing.assert_allclose(
            sg["weight"][:D, cols], gg[f"0.w_x{gate}"].T, rtol=1e-12, atol=1e-14
        )
        np.testing.assert_allclose(
            sg["weight"][D:, cols], gg[f"0.w_h{gate}"].T, rtol=1e-12, atol=1e-14
        )
        np.testing.assert_allclose(sg["bias"][cols], gg[f"0.b_{gate}"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("batch_first", [False, True])
def test_seqbrnn_equals_bisequencer_with_caddtable(batch_first):
    tn.manual_seed(6)
    brnn = nn.SeqBRNN(D, H, batch_first=batch_first, mask_zero=True)
    bi = nn.BiSequencer(
        brnn.forward_module.to_fast_lstm(), brnn.backward_module.to_fast_lstm(), nn.CAddTable()
    )
    x, rng = _inputs(6)
    g = rng.standard_normal((T, B, H))
    swap = (lambda a: a.transpose(1, 0, 2)) if batch_first else (lambda a: a)
    y = brnn.forward(swap(x))
    gin = brnn.backward(swap(x), swap(g))
    np.testing.assert_allclose(swap(y), bi.forward(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(swap(gin), bi.backward(x, g), rtol=1e-12, atol=1e-14)
    assert not np.allclose(y, brnn.forward_module.forward(swap(x)))  # both directions count


def test_seqbrnn_join_merge_concatenates():
    brnn = nn.SeqBRNN(D, H, merge=nn.JoinTable(-1))
    x, _ = _inputs(7, masked=False)
    y = brnn.forward(x)
    np.testing.assert_allclose(y[..., :H], brnn.forward_module.forward(x), rtol=1e-13)
    bwd = brnn.backward_module.forward(x[::-1])[::-1]
    np.testing.assert_allclose(y[..., H:], bwd, rtol=1e-13)


def test_seq_reverse_sequence():
    x, rng = _inputs(8, masked=False)
    m = nn.SeqReverseSequence(1)
    np.testing.assert_array_equal(m.forward(x), x[:, ::-1])
    g = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(m.backward(x, g), g[:, ::-1])
    with pytest.raises(ShapeError, match="dimension 3"):
        nn.SeqReverseSequence(3).forward(x)


def test_batch_first_is_the_transposed_layout():
    tn.manual_seed(9)
    a = nn.SeqLSTM(D, H)
    b = nn.SeqLSTM(D, H, batch_first=True)
    b.load_state_dict(a.state_dict())
    x, rng = _inputs(9, masked=False)
    g = rng.standard_normal((T, B, H))
    np.testing.assert_allclose(b.forward(x.transpose(1, 0, 2)), a.forward(x).transpose(1, 0, 2))
    np.testing.assert_allclose(
        b.backward(x.transpose(1, 0, 2), g.transpose(1, 0, 2)),
        a.backward(x, g).transpose(1, 0, 2),
        rtol=1e-13,
    )


def test_remember_carries_state_like_a_sequencer():
    tn.manual_seed(10)
    m = nn.SeqLSTM(D, H)
    x, _ = _inputs(10, masked=False)
    whole = m.forward(np.concatenate([x, x]))
    m.remember("both").forget()  # (the last call's state is kept until forget, as Torch7)
    m.forward(x)
    np.testing.assert_allclose(m.forward(x), whole[T:], rtol=1e-13)
    np.testing.assert_allclose(m.cell[-1], m.get(0).states["c"][-1])
    m.forget()
    np.testing.assert_allclose(m.forward(x), whole[:T], rtol=1e-13)
    m.remember("neither")
    m.forward(x)
    np.testing.assert_allclose(m.forward(x), whole[:T], rtol=1e-13)


def test_torch7_initialisation():
    tn.manual_seed(11)
    m = nn.SeqLSTM(30, 40)
    assert list(m.named_parameters()) == ["weight", "bias"]
    assert m.weight.shape == (70, 160)
    np.testing.assert_array_equal(m.bias.data, np.r_[np.zeros(40), np.ones(40), np.zeros(80)])
    assert abs(m.weight.data.std() * np.sqrt(70) - 1) < 0.05
    g = nn.SeqGRU(30, 40)
    np.testing.assert_array_equal(g.bias.data, np.r_[np.zeros(40), np.ones(40), np.zeros(40)])
    nested = nn.Sequential().add(nn.SeqLSTM(30, 40))
    nested.get(0).weight.data[...] = 0
    nested.get(0).bias.data[...] = 5
    nested.reset()  # a container resets it with its own (Torch7) init
    np.testing.assert_array_equal(nested.get(0).bias.data, m.bias.data)
    assert abs(nested.get(0).weight.data.std() * np.sqrt(70) - 1) < 0.05
    clone = copy.deepcopy(m)
    np.testing.assert_array_equal(
        clone.forward(np.ones((2, 1, 30))), m.forward(np.ones((2, 1, 30)))
    )
    p = nn.SeqLSTMP(30, 40, 20)
    assert abs(p.weight.data.std() * np.sqrt(70) - 1) < 0.05
    assert abs(p.weight_o.data.std() * np.sqrt(60) - 1) < 0.05


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.SeqLSTM(D, H, mask_zero=True),
        lambda: nn.SeqLSTMP(D, H, R),
        lambda: nn.SeqGRU(D, H),
        lambda: nn.SeqBRNN(D, H),
    ],
    ids=["lstm", "lstmp", "gru", "brnn"],
)
def test_gradcheck_and_float32(make):
    tn.manual_seed(12)
    m = make()
    x, rng = _inputs(12, masked=False)  # (a zero row is a step function of its entries)
    out = m.forward(x)
    assert tn.testing.gradcheck_module(m, nn.MSECriterion(), x, rng.standard_normal(out.shape))
    m32 = make()
    m32.load_state_dict(m.state_dict())
    m32.astype(np.float32)
    y32 = m32.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, m.forward(x), rtol=1e-4, atol=1e-5)
    assert m32.backward(x.astype(np.float32), np.ones_like(y32)).dtype == np.float32


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((T, D)), "3-d input"),
        (np.zeros((T, B, D + 1)), "3-d input"),
        ([np.zeros((B, H + 1)), np.zeros((T, B, D))], r"initial state h0 must have shape \(3, 4\)"),
        ([np.zeros((B, H))] * 3 + [np.zeros((T, B, D))], "list of"),
    ],
)
def test_bad_input_raises_shape_error(bad, match):
    m = nn.SeqLSTM(D, H)
    with pytest.raises(ShapeError, match=match) as info:
        m.forward(bad)
    assert "nn.SeqLSTM(3 -> 4)" in str(info.value)


def _kernels(m, steps):
    x = np.random.default_rng(13).standard_normal((steps, B, D))
    m.forward(x)
    m.backward(x, np.ones((steps, B, H)))
    return m.compile_report().kernels


def test_compiles_like_sequencer_fastlstm():
    tn.manual_seed(13)
    seq = nn.SeqLSTM(D, H)
    fast = nn.Sequencer(seq.to_fast_lstm(), unroll=True)  # per-step kernels, unrolled
    (s4, s8), (f4, f8) = [[_kernels(m, steps) for steps in (4, 8)] for m in (seq, fast)]
    # per step: no more kernels ([i, f, o] are adjacent in SeqLSTM's layout, one sigmoid where
    # FastLSTM's [i, g, f, o] needs separate ones); once per call: at most the weight's two
    # blocks sliced in backward and the gradient's two blocks joined
    assert s8 - s4 <= f8 - f4, (s4, s8, f4, f8)
    assert s4 <= f4 + 3, (s4, f4)


def test_seqbrnn_matches_numpy_equations():
    tn.manual_seed(14)
    m = nn.SeqBRNN(D, H, mask_zero=True)
    x, rng = _inputs(14)
    p = params_of(m)

    def fn(fw, fb, bw, bb, x):
        zeros = np.zeros((x.shape[1], H))
        fwd = seqlstm({"weight": fw, "bias": fb}, x, zeros, zeros, True)
        return fwd + seqlstm({"weight": bw, "bias": bb}, x[::-1], zeros, zeros, True)[::-1]

    arrays = {
        "fw": p["fwd.weight"],
        "fb": p["fwd.bias"],
        "bw": p["bwd.weight"],
        "bb": p["bwd.bias"],
        "x": x,
    }
    y = m.forward(x)
    np.testing.assert_allclose(y, fn(**arrays), rtol=1e-12, atol=1e-14)
    seed = rng.standard_normal(y.shape)
    m.zero_grad_parameters()
    gin = m.backward(x, seed)
    exact = complex_step_grads(fn, arrays, seed)
    np.testing.assert_allclose(gin, exact["x"], rtol=1e-10, atol=1e-12)
    for ours, name in [
        ("fw", "fwd.weight"),
        ("fb", "fwd.bias"),
        ("bw", "bwd.weight"),
        ("bb", "bwd.bias"),
    ]:
        np.testing.assert_allclose(
            m.named_parameters()[name].grad, exact[ours], rtol=1e-10, atol=1e-12, err_msg=name
        )
    with pytest.raises(ShapeError, match="3-d input") as info:
        m.forward(x[0])
    assert "nn.SeqBRNN" in str(info.value)


def test_seq_reverse_sequence_gradcheck_and_float32():
    x, rng = _inputs(15, masked=False)
    m = nn.SeqReverseSequence(0)
    assert tn.testing.gradcheck_module(m, nn.MSECriterion(), x, rng.standard_normal(x.shape))
    y = m.astype(np.float32).forward(x.astype(np.float32))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x[::-1].astype(np.float32))
