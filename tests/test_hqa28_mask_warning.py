"""QA round hqa28: MaskZero around a whole recurrent module warns, as Element-RNN's did (#123)."""

import warnings

import numpy as np
import pytest

from tapernn import nn


@pytest.mark.parametrize("wrapper", [nn.MaskZero, nn.TrimZero])
def test_masking_a_whole_recurrent_module_warns_that_its_state_is_not_reset(wrapper):
    # (was silent: MaskZero(LSTM) zeroes the output rows, the row's state carries on, unlike
    # LSTM(...).mask_zero(); Element-RNN printed "you are most likely using MaskZero the wrong
    # way" for a ported nn.MaskZero(nn.LSTM(...), 1))
    with pytest.warns(UserWarning, match=r"nn\.LSTM\(3 -> 4\).*mask_zero\(\)"):
        m = nn.Sequencer(wrapper(nn.LSTM(3, 4), 1))
    xs = np.ones((3, 2, 3))
    xs[1, 0] = 0
    m.forward(xs)  # (still computes: a warning, as Torch7's)


def test_masking_a_non_recurrent_module_or_a_masked_cell_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.MaskZero(nn.Linear(3, 4), 1)
        nn.TrimZero(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), 1)
        nn.Sequencer(nn.LSTM(3, 4).mask_zero()).forward(np.ones((2, 2, 3)))
