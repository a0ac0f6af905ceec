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
