"""Small regressions found by hqa4's differential hunt."""

from __future__ import annotations

import numpy as np
import pytest

from tapernn import nn
from tapernn.errors import ArgumentError


@pytest.mark.parametrize("make", [lambda: nn.SeqLSTM(3, 4), lambda: nn.SeqGRU(3, 4)])
def test_seq_modules_refuse_lengths_by_name_and_the_suggested_route_works(make):
    m = make()
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    lengths = np.array([5, 3])
    with pytest.raises(ArgumentError, match="takes no lengths=.*mask_zero"):  # (was TypeError)
        m.forward(x, lengths=lengths)
    cell = m.to_fast_lstm() if isinstance(m, nn.SeqLSTM) else m.to_gru()
    y = nn.Sequencer(cell).forward(x, lengths=lengths)
    np.testing.assert_allclose(y[:, :1], m.forward(x)[:, :1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y[:3, 1:], m.forward(x[:3, 1:]), rtol=1e-12, atol=1e-12)
    assert np.all(y[3:, 1] == 0)


@pytest.mark.parametrize("unroll", [None, True])
def test_reinforce_normal_under_lengths_adds_nothing_past_a_rows_end(unroll, backend):
    # (before: the padded rows' REINFORCE terms reached the layer below: a wrong bias gradient)
    import tapernn as tn

    rng = np.random.default_rng(0)
    T, B, D, H, s = 4, 3, 3, 2, 0.5
    x = rng.standard_normal((T, B, D))
    lengths = np.array([4, 1, 2])
    valid = (np.arange(T)[:, None] < lengths[None, :])[..., None]
    x = x * valid
    tn.manual_seed(0)
    lin, rn = nn.Linear(D, H), nn.ReinforceNormal(s, rng=np.random.default_rng(3))
    m = nn.Sequencer(nn.Sequential(lin, rn), unroll=unroll)
    y = np.array(m.forward(x, lengths=lengths), copy=True)
    r = np.array([1.0, 2.0, -1.0])
    rn.reinforce(r)
    m.zero_grad_parameters()
    m.backward(x, np.zeros_like(y))
    # NumPy: d(-r log N(y; mean, s)) / d mean = -r (y - mean) / s^2 on the rows' own steps
    mean = x @ lin.weight.data.T + lin.bias.data
    g = -r[None, :, None] * (y - mean) * valid / s**2
    np.testing.assert_allclose(lin.weight.grad, np.einsum("tbh,tbd->hd", g, x), atol=1e-12)
    np.testing.assert_allclose(lin.bias.grad, g.sum((0, 1)), atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 3, 4), (5, 40, 100)])  # whole-program / loop kernels
def test_numba_kernels_with_one_source_and_other_constants_use_their_own(shape):
    # (before: kernels were registered by source alone and bound the constants of the first
    # program registered: NormStabilizer(0.29) ran with another model's beta from the numba
    # switch call on, in the same process)
    import tapernn as tn
    from tapernn.backends import numba_available

    if not numba_available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(0)
    hs, g = rng.standard_normal(shape), rng.standard_normal(shape)
    got, want = {}, {}
    before = tn.get_backend()
    try:
        for backend, into in (("numba", got), ("numpy", want)):
            tn.set_backend(backend)
            for beta in (1.0, 0.29):
                seq = nn.Sequencer(nn.NormStabilizer(beta))
                for _ in range(4):  # past the numba switch call
                    seq.forward(hs)
                    into[beta] = np.array(seq.backward(hs, g), copy=True)
    finally:
        tn.set_backend(before)
    for beta, value in got.items():
        np.testing.assert_allclose(value, want[beta], rtol=1e-10, atol=1e-12)
