"""QA round hqa28: error messages a user reads name the module, the step and the range."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def _ids(bad: int) -> np.ndarray:
    return np.array([[1], [2], [bad], [0]])


def test_lookup_id_out_of_range_in_a_rolled_loop_names_the_module_and_step():
    # (was: "scan failed: scan step 2 of 4: embedding (in '0.0') failed: id 7 ...")
    m = nn.Sequencer(nn.Sequential(nn.LookupTable(5, 2), nn.LSTM(2, 3)))
    with pytest.raises(tn.ValueRangeError) as info:
        m.forward(_ids(7))
    text = str(info.value)
    assert "nn.LookupTable(5 -> 2)" in text
    assert "'0.0'" in text and "step 2 of 4" in text
    assert "id 7 out of range: expected 0 <= id < 5" in text
    assert not text.startswith("scan failed")


def test_lookup_id_out_of_range_at_top_level_names_the_module():
    m = nn.Sequential(nn.LookupTable(5, 2), nn.SplitTable(0), nn.Sequencer(nn.LSTM(2, 3)))
    with pytest.raises(tn.ValueRangeError) as info:
        m.forward(_ids(-1))
    text = str(info.value)
    assert "nn.LookupTable(5 -> 2)" in text and "'0'" in text
    assert "id -1 out of range" in text


def test_a_functional_program_without_modules_still_names_the_op():
    def f(w, ids):
        return tn.embedding(w, ids)

    prog = tn.compile(tn.trace(f, np.zeros((5, 2)), np.array([1, 2])))
    with pytest.raises(tn.ValueRangeError, match=r"embedding failed.*id 9 out of range"):
        prog(np.zeros((5, 2)), np.array([1, 9]))


def test_a_sequencer_criterions_bad_target_names_its_step():
    # (was: "nn.ClassNLLCriterion: class target 5 out of range ..." -- which of T steps?)
    crit = nn.SequencerCriterion(nn.ClassNLLCriterion())
    x = np.log(np.full((4, 2, 5), 0.2))
    t = np.array([[1, 2], [3, 4], [5, 0], [0, 0]])
    with pytest.raises(tn.ValueRangeError, match=r"class target 5 out of range.*step 2 of 4"):
        crit.forward(x, t)
    bce = nn.SequencerCriterion(nn.BCECriterion())
    with pytest.raises(tn.ValueRangeError, match=r"targets must be probabilities.*step 1 of 2"):
        bce.forward([np.full((2, 3), 0.5)] * 2, [np.zeros((2, 3)), np.full((2, 3), 2.0)])
