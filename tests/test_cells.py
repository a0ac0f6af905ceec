"""Built-in cells against hand-written NumPy equations: forward and every gradient (1e-10),
batched and unbatched, stepped and sequenced."""

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, gru_step, lstm_step, rnn_step, run

import tapernn as tn
from tapernn import nn

D, H, T = 3, 4, 4

CASES = {
    "lstm": (lambda: nn.LSTM(D, H), lstm_step, 2),
    "lstm-nopeep": (
        lambda: nn.LSTM(D, H, peephole=False),
        lambda p, x, h, c: lstm_step(p, x, h, c, peephole=False),
        2,
    ),
    "fastlstm": (lambda: nn.FastLSTM(D, H), fastlstm_step, 2),
    "gru": (lambda: nn.GRU(D, H), gru_step, 1),
    "gru-reset-after": (
        lambda: nn.GRU(D, H, reset_after=True),
        lambda p, x, h: gru_step(p, x, h, reset_after=True),
        1,
    ),
    "rnn-tanh": (lambda: nn.RNN(D, H), rnn_step, 1),
    "rnn-relu": (lambda: nn.RNN(D, H, "relu"), lambda p, x, h: rnn_step(p, x, h, "relu"), 1),
}


def params_of(m):
    return {k: p.data.copy() for k, p in m.named_parameters().items()}


@pytest.mark.parametrize("batch", [None, 2], ids=["unbatched", "batched"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cell_matches_numpy_equations(case, batch, backend):
    if backend == "numba" and batch is None and case not in ("lstm", "gru"):
        # each numba case costs a cold whole-program compile (3-8 s); unbatched numba programs
        # are covered by lstm and gru here and by test_config_fuzz's numba cases
        pytest.skip("unbatched numba: lstm and gru only (cold compile time)")
    make, step, n_states = CASES[case]
    tn.manual_seed(3)
    cell = make()
    rng = np.random.default_rng(5)
    shape = (T, D) if batch is None else (T, batch, D)
    xs = rng.standard_normal(shape)
    seed = rng.standard_normal(shape[:-1] + (H,))
    expected, _ = run(step, params_of(cell), xs, n_states, H)
    seq = nn.Sequencer(cell)
    got = seq.forward(xs)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    seq.zero_grad_parameters()
    grad_x = seq.backward(xs, seed)
    exact = complex_step_grads(step, params_of(cell), xs, n_states, H, seed)
    np.testing.assert_allclose(grad_x, exact["input"], rtol=1e-10, atol=1e-12)
    for name, p in cell.named_parameters().items():
        np.testing.assert_allclose(p.grad, exact[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", ["lstm", "gru", "fastlstm"])
def test_stepwise_equals_sequencer(case):
    make, _, _ = CASES[case]
    tn.manual_seed(4)
    a = make()
    b = make()
    b.load_state_dict(a.state_dict())
    rng = np.random.default_rng(0)
    xs, gs = rng.standard_normal((T, 2, D)), rng.standard_normal((T, 2, H))
    stepped = [a.forward(x) for x in xs]
    grads_in = [a.backward(xs[t], gs[t]) for t in reversed(range(T))][::-1]
    seq = nn.Sequencer(b)
    out = seq.forward(list(xs))
    gin = seq.backward(list(xs), list(gs))
    for t in range(T):
        np.testing.assert_allclose(stepped[t], out[t], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grads_in[t], gin[t], rtol=1e-10, atol=1e-13)
    for (name, p), q in zip(a.named_parameters().items(), b.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-10, atol=1e-13, err_msg=name)
    assert len(a.outputs) == T and a.step == T and len(b.outputs) == T
    np.testing.assert_allclose(a.outputs[2], b.outputs[2])


def test_fastlstm_equals_lstm_without_peepholes_after_relayout():
    tn.manual_seed(1)
    fast, slow = nn.FastLSTM(D, H), nn.LSTM(D, H, peephole=False)
    W, b, U = (fast.named_parameters()[k].data for k in ("i2g.weight", "i2g.bias", "o2g.weight"))
    for k, gate in enumerate("igfo"):  # FastLSTM blocks are ordered [i, g, f, o]
        rows = slice(k * H, (k + 1) * H)
        getattr(slow, f"w_x{gate}").data[...] = W[rows]
        getattr(slow, f"b_{gate}").data[...] = b[rows]
        getattr(slow, f"w_h{gate}").data[...] = U[rows]
    xs = np.random.default_rng(2).standard_normal((5, 3, D))
    np.testing.assert_allclose(
        nn.Sequencer(fast).forward(xs), nn.Sequencer(slow).forward(xs), rtol=1e-13, atol=1e-14
    )


def test_parameter_names_follow_the_contract():
    assert list(nn.LSTM(D, H).named_parameters()) == [
        "w_xi",
        "w_xf",
        "w_xg",
        "w_xo",
        "w_hi",
        "w_hf",
        "w_hg",
        "w_ho",
        "b_i",
        "b_f",
        "b_g",
        "b_o",
        "p_i",
        "p_f",
        "p_o",
    ]
    assert list(nn.FastLSTM(D, H).named_parameters()) == ["i2g.weight", "i2g.bias", "o2g.weight"]
    assert list(nn.GRU(D, H, reset_after=True).named_parameters())[-1] == "b_hn"
    assert list(nn.RNN(D, H).named_parameters()) == ["w_xh", "w_hh", "b_h"]
    assert nn.FastLSTM(D, H).named_parameters()["i2g.weight"].shape == (4 * H, D)


def test_lstm_defaults_output_size_to_input_size_and_uniform_init():
    tn.manual_seed(0)
    m = nn.LSTM(6)
    assert m.hidden_size == 6
    w = m.w_xi.data
    assert np.abs(w).max() <= 1 / np.sqrt(6) and w.std() > 0.1


class _Elman(nn.Cell):
    def __init__(self, D, H):
        super().__init__(D, H)
        self.W = self.parameter("W", (D + H, H))

    def step(self, x, h):
        return tn.tanh(tn.concat([x, h], -1) @ self.W)


class _LeakyElman(_Elman):
    def step(self, x, h):
        return 0.5 * h + 0.5 * super().step(x, h)


def test_a_subclass_step_can_call_super_step():
    cell = _LeakyElman(2, 3)
    x = np.random.default_rng(0).standard_normal((4, 1, 2))
    y = nn.Sequencer(cell).forward(x)
    W, h = cell.W.data, np.zeros((1, 3))
    for t in range(4):
        h = 0.5 * h + 0.5 * np.tanh(np.concatenate([x[t], h], -1) @ W)
        np.testing.assert_allclose(y[t], h, rtol=1e-12, atol=1e-15)
    stepped = _LeakyElman(2, 3)
    stepped.W.data[...] = W
    for t in range(4):
        stepped.forward(x[t])
    assert stepped.step == 4 and _Elman(2, 3).step == 0
    np.testing.assert_allclose(stepped.output, h, rtol=1e-12, atol=1e-15)
