"""NormStabilizer in a Sequencer called with `lengths=`: a row adds no penalty past its length.
Before, the padded steps' zero rows paired with the row's last state (a penalty that running
the row alone has not) and the norm of a zero row has a NaN gradient, which turned every
gradient of the padded rows (and the parameters') into NaN. Oracle: each row run alone with
beta / B (the penalty's mean stays over the batch), its gradients summed."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

T, B, D, H = 5, 3, 4, 6
LENGTHS = np.array([5, 3, 2])


def run(m, x, g, lengths=None):
    m.zero_grad_parameters()
    y = np.array(m.forward(x) if lengths is None else m.forward(x, lengths=lengths), copy=True)
    gx = np.array(m.backward(x, g), copy=True)
    return [y, gx] + [p.grad.copy() for p in m.parameters()]


@pytest.mark.parametrize("unroll", [None, True])
def test_padded_steps_add_no_penalty_and_no_nan(unroll, backend):
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    for i, n in enumerate(LENGTHS):
        x[n:, i] = g[n:, i] = 0
    tn.manual_seed(0)
    rnn, ns = nn.RNN(D, H), nn.NormStabilizer(2.0)
    got = run(nn.Sequencer(nn.Sequential(rnn, ns), unroll=unroll), x, g, LENGTHS)
    assert all(np.all(np.isfinite(a)) for a in got)
    ns_alone = nn.NormStabilizer(2.0 / B)
    alone = nn.Sequencer(nn.Sequential(rnn, ns_alone), unroll=unroll)
    want = [np.zeros_like(a) for a in got]
    for i, n in enumerate(LENGTHS):
        r = run(alone, x[:n, i : i + 1], g[:n, i : i + 1])
        want[0][:n, i : i + 1], want[1][:n, i : i + 1] = r[0], r[1]
        for k in range(2, len(want)):
            want[k] += r[k]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_zero_rows_of_mask_zero_give_finite_gradients_equal_to_finite_differences():
    # (before: the norm of a row LSTM.mask_zero() zeroed had a NaN gradient, and the mask
    # multiplies it: NaN * 0 = NaN in every gradient)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3))
    x[:2, 1] = 0  # row 1 left-padded
    g = rng.standard_normal((4, 2, 4))
    beta = 3.0
    tn.manual_seed(0)
    m = nn.Sequencer(nn.Sequential(nn.LSTM(3, 4).mask_zero(), nn.NormStabilizer(beta)))

    def loss() -> float:  # NumPy: <y, g> + beta sum_t mean_b (|h_t| - |h_t-1|)^2
        y = m.forward(x)
        n = np.linalg.norm(y, axis=-1)
        return float((y * g).sum() + beta * ((n[1:] - n[:-1]) ** 2).mean(1).sum())

    m.forward(x)
    m.zero_grad_parameters()
    m.backward(x, g)
    grads = [p.grad.copy() for p in m.parameters()]
    assert all(np.all(np.isfinite(a)) for a in grads)
    for p, grad in zip(m.parameters(), grads):
        for idx in [(0,) * p.data.ndim, tuple(s - 1 for s in p.data.shape)]:
            old = p.data[idx]
            p.data[idx] = old + 1e-6
            up = loss()
            p.data[idx] = old - 1e-6
            down = loss()
            p.data[idx] = old
            assert (up - down) / 2e-6 == pytest.approx(grad[idx], rel=1e-5, abs=1e-7)
