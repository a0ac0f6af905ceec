"""A bad id in a LookupTable whose lookup the loop pass moved out of its loop (push_out: the
Repeater's input is the same at every step; a Sequencer's ids are stacked) names the
LookupTable, as it does inside the loop (hqa28), not the Repeater around it."""

from __future__ import annotations

import numpy as np
import pytest

from tapernn import nn
from tapernn.errors import ValueRangeError


def _repeated():
    return nn.Repeater(nn.Sequential(nn.LookupTable(5, 3), nn.LSTM(3, 4)), 4), np.array([1, 7])


def _sequenced():
    model = nn.Sequencer(nn.Sequential(nn.LookupTable(5, 3), nn.LSTM(3, 4)))
    return model, np.array([[1, 2], [3, 7], [0, 1]])


@pytest.mark.parametrize("make", [_repeated, _sequenced])
def test_a_bad_id_of_a_lookup_moved_out_of_its_loop_names_the_lookup_table(make, backend):
    model, bad = make()
    model.forward(np.zeros_like(bad))  # (compiled with good ids first: the same program)
    with pytest.raises(ValueRangeError) as e:
        model.forward(bad)
    text = str(e.value)
    assert text.startswith("nn.LookupTable(5 -> 3) (in '"), text
    assert "id 7 out of range: expected 0 <= id < 5" in text, text
