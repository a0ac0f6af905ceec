"""NormStabilizer: identity forward; backward = grad_output + the hand-written gradient of the
norm-stabilising penalty (Torch7's formula, not divided by T); finite differences of the penalty;
step-wise == Sequencer; evaluation; remember across chunks; errors; float32."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import ShapeError

T, B, H = 5, 3, 4


def penalty(hs, beta):
    n = np.sqrt((hs * hs).sum(-1))  # (T, B)
    return beta * ((n[1:] - n[:-1]) ** 2).mean(-1).sum()


def torch7_grad(hs, g, beta):
    """Element-RNN NormStabilizer:_updateGradInput, step by step."""
    n = np.sqrt((hs * hs).sum(-1, keepdims=True))
    out = g.copy()
    for t in range(len(hs)):
        if t > 0:
            out[t] += 2 * beta * (n[t] - n[t - 1]) / n[t] * hs[t] / B
        if t < len(hs) - 1:
            out[t] += 2 * beta * (n[t] - n[t + 1]) / n[t] * hs[t] / B
    return out


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_matches_torch7_gradient(beta):
    rng = np.random.default_rng(0)
    hs, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    seq = nn.Sequencer(nn.NormStabilizer(beta))
    np.testing.assert_array_equal(seq.forward(hs), hs)
    np.testing.assert_allclose(
        seq.backward(hs, g), torch7_grad(hs, g, beta), rtol=1e-10, atol=1e-13
    )


def test_gradient_is_the_penalty_derivative():
    rng = np.random.default_rng(1)
    hs, r = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    seq = nn.Sequencer(nn.NormStabilizer(0.7))
    seq.forward(hs)
    analytic = seq.backward(hs, r)
    eps, numeric = 1e-6, np.zeros_like(hs)
    for idx in np.ndindex(hs.shape):
        up, down = hs.copy(), hs.copy()
        up[idx] += eps
        down[idx] -= eps
        f = [np.sum(r * v) + penalty(v, 0.7) for v in (up, down)]
        numeric[idx] = (f[0] - f[1]) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_stepwise_equals_sequencer_and_after_an_lstm():
    rng = np.random.default_rng(2)
    hs, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    ns = nn.NormStabilizer(1.0)
    for t in range(T):
        ns.forward(hs[t])
    stepped = [ns.backward(hs[t], g[t]) for t in reversed(range(T))][::-1]
    np.testing.assert_allclose(np.stack(stepped), torch7_grad(hs, g, 1.0), rtol=1e-10, atol=1e-13)
    tn.manual_seed(2)
    lstm = nn.FastLSTM(3, H)
    stack = nn.Sequencer(nn.Sequential().add(lstm).add(nn.NormStabilizer(1.0)))
    plain = nn.Sequencer(lstm)
    xs = rng.standard_normal((T, B, 3))
    np.testing.assert_allclose(stack.forward(xs), plain.forward(xs), rtol=1e-14)
    stack.zero_grad_parameters()
    gin = stack.backward(xs, g)
    # the same as the plain LSTM given the stabilised gradient of its outputs
    plain.zero_grad_parameters()
    hs2 = plain.forward(xs)
    np.testing.assert_allclose(
        gin, plain.backward(xs, torch7_grad(hs2, g, 1.0)), rtol=1e-10, atol=1e-13
    )


def test_evaluation_is_the_identity_and_remember_pairs_across_chunks():
    rng = np.random.default_rng(3)
    hs, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    seq = nn.Sequencer(nn.NormStabilizer(1.0))
    seq.evaluate()
    np.testing.assert_array_equal(seq.forward(hs), hs)
    seq.training().remember("both")
    seq.forward(hs[:2])
    seq.forward(hs[2:])
    got = seq.backward(hs[2:], g[2:])
    full = torch7_grad(hs, g, 1.0)
    # the newest chunk: its own pairs, plus the pair with the last step of the previous chunk
    np.testing.assert_allclose(got, full[2:], rtol=1e-10, atol=1e-13)


def test_float32_and_bad_input():
    hs = np.random.default_rng(4).standard_normal((T, B, H)).astype(np.float32)
    seq = nn.Sequencer(nn.NormStabilizer()).astype(np.float32)
    assert seq.forward(hs).dtype == np.float32
    g = seq.backward(hs, np.zeros_like(hs))
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, torch7_grad(hs.astype(float), 0 * hs, 1.0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ShapeError, match=r"\(batch, features\)") as info:
        nn.NormStabilizer().forward(np.ones(H))
    assert "nn.NormStabilizer" in str(info.value)
