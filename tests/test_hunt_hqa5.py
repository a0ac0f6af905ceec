"""Found by hqa5's QA hunt (each test failed before its fix)."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def _empty_cases():
    yield "lstm", nn.Sequencer(nn.LSTM(3, 4)), np.zeros((5, 0, 3)), (5, 0, 4)
    yield "linear", nn.Sequencer(nn.Linear(3, 4)), np.zeros((5, 0, 3)), (5, 0, 4)
    yield (
        "stack",
        nn.Sequencer(nn.Sequential(nn.FastLSTM(3, 4), nn.NormStabilizer(0.1), nn.GRU(4, 4))),
        np.zeros((5, 0, 3)),
        (5, 0, 4),
    )
    yield "list", nn.Sequencer(nn.GRU(3, 4)), [np.zeros((0, 3))] * 4, (4, 0, 4)
    yield "bi", nn.BiSequencer(nn.GRU(3, 4)), np.zeros((5, 0, 3)), (5, 0, 8)
    yield "repeater", nn.Repeater(nn.LSTM(3, 4), 3), np.zeros((0, 3)), (3, 0, 4)


@pytest.mark.parametrize("case", list(_empty_cases()), ids=lambda c: c[0])
def test_an_empty_batch_runs_as_unrolled(case, backend):
    # (before: the rolled loop raised "reshape: cannot reshape (0,) into (-1, 0, 4)" or
    # "scan: internal error, a ys view of the slab is a copy"; unroll=True and the step-wise
    # modules already returned empty outputs)
    _, m, x, shape = case
    for _ in range(2):  # (the second call: the steady path)
        y = m.forward(x)
        ys = y if isinstance(y, list) else list(y)
        assert np.stack(ys).shape == shape
        m.zero_grad_parameters()
        g = [np.ones_like(v) for v in y] if isinstance(y, list) else np.ones_like(y)
        gx = m.backward(x, g)
        assert np.shape(gx if not isinstance(gx, list) else np.stack(gx)) == np.shape(
            x if not isinstance(x, list) else np.stack(x)
        )
        assert all(not np.any(p.grad) for p in m.parameters())


def test_lengths_of_an_empty_batch():
    # (before: lengths.min() of no rows raised a bare ValueError)
    m = nn.Sequencer(nn.GRU(3, 4))
    assert m.forward(np.zeros((4, 0, 3)), lengths=np.zeros(0, int)).shape == (4, 0, 4)


@pytest.mark.parametrize("cls", [nn.BiSequencer, nn.BiSequencerLM])
def test_bidirectional_lengths_is_refused_by_name(cls):
    # (before: a bare TypeError "unexpected keyword argument 'lengths'")
    m = cls(nn.GRU(3, 4))
    with pytest.raises(tn.ArgumentError, match="takes no lengths=.*mask_zero"):
        m.forward(np.zeros((5, 2, 3)), lengths=[2, 3])
    assert m.forward(np.zeros((5, 2, 3))).shape == (5, 2, 8)


def test_bisequencer_over_mask_zero_cells_runs_each_padded_row_as_alone():
    """What the lengths= refusal recommends: zero padding and mask_zero() cells."""
    import copy

    rng = np.random.default_rng(0)
    tn.manual_seed(0)
    bi = nn.BiSequencer(nn.GRU(3, 4).mask_zero(), nn.LSTM(3, 4).mask_zero())
    x = rng.standard_normal((5, 2, 3))
    x[3:, 0] = 0.0  # row 0 has length 3
    y = bi.forward(x)
    alone = copy.deepcopy(bi)
    np.testing.assert_allclose(y[:3, :1], alone.forward(x[:3, :1]), rtol=1e-12, atol=1e-14)
    assert not np.any(y[3:, 0])
    np.testing.assert_allclose(y[:, 1:], alone.forward(x[:, 1:]), rtol=1e-12, atol=1e-14)
