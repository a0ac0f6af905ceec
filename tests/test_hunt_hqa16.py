"""hqa16: BiSequencer.remember refused by name, the step history after astype (kept: the call's
results), a child converted alone refused at the next forward (was mixed precision)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import DTypeError, StateError


@pytest.mark.parametrize("cls", [nn.BiSequencer, nn.BiSequencerLM])
def test_bisequencer_remember_says_there_is_none_and_what_to_use(cls):
    """On main: a bare AttributeError."""
    bi = cls(nn.LSTM(3, 4), nn.LSTM(3, 4))
    with pytest.raises(StateError, match=r"has no remember\(\).*nn.Sequencer\(cell\).remember"):
        bi.remember("both")
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    assert bi.forward(x).shape == (4, 2, 8)  # (still usable: each call a whole sequence)


def _numpy_lstm(model, x, h, c):
    """Element-Research LSTM (peepholes) in NumPy, from the model's parameters."""
    p = {k.split(".")[-1]: v.data for k, v in model.named_parameters().items()}

    def sig(a):
        return 1 / (1 + np.exp(-a))

    hs = []
    for xt in x:
        i = sig(xt @ p["w_xi"].T + h @ p["w_hi"].T + p["b_i"] + c * p["p_i"])
        f = sig(xt @ p["w_xf"].T + h @ p["w_hf"].T + p["b_f"] + c * p["p_f"])
        g = np.tanh(xt @ p["w_xg"].T + h @ p["w_hg"].T + p["b_g"])
        c = f * c + i * g
        o = sig(xt @ p["w_xo"].T + h @ p["w_ho"].T + p["b_o"] + c * p["p_o"])
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs), h, c


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_step_history_keeps_its_calls_dtype_after_astype(backend):
    """Documented (docs/stateful.md): get_hidden_state(t) of the steps before `.float()` are
    that call's results, as `output` -- unchanged, in float64; the state the model continues
    from converts (hqa15), and the next call's steps are float32."""
    if backend == "numba" and not tn.backends.numba_available():
        pytest.skip("numba is not installed")
    tn.manual_seed(3)
    seq = nn.Sequencer(nn.LSTM(3, 5)).remember("both")
    x = np.random.default_rng(1).standard_normal((4, 2, 3))
    old = tn.backends.get_backend()
    tn.set_backend(backend)
    try:
        y = seq.forward(x)
        before = [tuple(a.copy() for a in seq.get_hidden_state(t)) for t in range(4)]
        seq.float()
        for t in range(4):
            got = seq.get_hidden_state(t)
            assert all(a.dtype == np.float64 for a in got)
            assert all(np.array_equal(a, b) for a, b in zip(got, before[t]))
        assert seq.output.dtype == np.float64 and np.array_equal(seq.output, y)
        y2 = seq.forward(x)
        h, c = before[-1]
        want, _, _ = _numpy_lstm(
            seq, x.astype(np.float32), h.astype(np.float32), c.astype(np.float32)
        )
        assert y2.dtype == np.float32 and want.dtype == np.float32
        np.testing.assert_allclose(y2, want, rtol=0, atol=2e-6)
        assert all(a.dtype == np.float32 for a in seq.get_hidden_state(-1))
    finally:
        tn.set_backend(old)


def _mixed_models():
    seq = nn.Sequencer(nn.LSTM(3, 4))
    yield seq, lambda: seq.get(0).float(), "'0' nn.LSTM(3 -> 4) (float32)", "float64"
    stack = nn.Sequencer(nn.Sequential().add(nn.GRU(3, 4)).add(nn.Linear(4, 2)))
    yield stack, lambda: stack.get(0).get(1).float(), "'0.1' nn.Linear(4 -> 2)", "float64"
    down = nn.Sequencer(nn.Sequential().add(nn.FastLSTM(3, 4)).add(nn.Linear(4, 2))).float()
    yield (
        down,
        lambda: down.get(0).get(0).double(),
        "'0.0.i2g' nn.Linear(3 -> 16) (float64); '0.0.o2g'",
        "float32",
    )


@pytest.mark.parametrize("case", range(3))
def test_a_child_converted_alone_is_refused_at_the_next_forward(case):
    """On main: the forward ran (parameters of two dtypes, results in the root's)."""
    model, convert, names, root = list(_mixed_models())[case]
    x = np.random.default_rng(2).standard_normal((5, 2, 3))
    y = model.forward(x)
    model.forward(x)  # (twice: the steady path's call)
    convert()
    with pytest.raises(DTypeError, match="another dtype") as e:
        model.forward(x)
    assert names in str(e.value) and f"computes in {root}" in str(e.value)
    assert "model.float() / model.double()" in str(e.value)
    model.astype(root)  # the whole model converted back: runs, the same outputs
    np.testing.assert_allclose(model.forward(x), y, rtol=1e-6, atol=1e-6)


def test_legitimately_mixed_models_still_run():
    rng = np.random.default_rng(4)
    # a float32 layer, then a parameterless float64 one added after it (the container adopted)
    m = nn.Sequential().add(nn.Linear(3, 4).float()).add(nn.Tanh())
    x = rng.standard_normal((2, 3))
    w, b = m.get(0).weight.data, m.get(0).bias.data
    y = m.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, np.tanh(x.astype(np.float32) @ w.T + b), rtol=1e-6)
    # integer ids into a float32 model
    lm = nn.Sequential().add(nn.LookupTable(10, 3)).add(nn.Linear(3, 2)).float()
    ids = np.array([[1, 7], [0, 9]])
    out = lm.forward(ids)
    e, lin = lm.get(0).weight.data, lm.get(1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, e[ids] @ lin.weight.data.T + lin.bias.data, rtol=1e-6)
    # a cell stepped by hand after the whole model is converted
    cell = nn.GRU(3, 4).float()
    assert cell.forward(x).dtype == np.float32
