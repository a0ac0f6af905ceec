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
