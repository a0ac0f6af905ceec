"""`pickle.dumps(module)` raises NotPicklableError (a TapernnError, also a TypeError and a
pickle.PicklingError) naming what to use instead; before, a bare TypeError "cannot pickle
'_thread.RLock' object". tn.save / tn.load_into, the suggested route, round-trips."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


@pytest.mark.parametrize("called", [False, True])
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Linear(3, 4),
        lambda: nn.Sequencer(nn.FastLSTM(3, 4)),
        lambda: nn.ClassNLLCriterion(),
    ],
)
def test_pickling_a_module_says_what_to_use(make, called):
    m = make()
    if called and not isinstance(m, nn.Criterion):
        x = np.ones((2, 3)) if isinstance(m, nn.Linear) else np.ones((5, 2, 3))
        m.forward(x)
    with pytest.raises(tn.NotPicklableError, match=r"tn\.save\(model, path\).*tn\.load_into"):
        pickle.dumps(m)
    with pytest.raises(TypeError):  # (what pickle raises for other unpicklable objects)
        pickle.dumps([m])
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(m, protocol=2)
    assert isinstance(copy.deepcopy(m), type(m))  # copies in this process still work


def test_the_suggested_route_round_trips(tmp_path):
    tn.manual_seed(0)
    a = nn.Sequencer(nn.FastLSTM(3, 4))
    tn.manual_seed(1)
    b = nn.Sequencer(nn.FastLSTM(3, 4))
    tn.save(a, tmp_path / "m")
    tn.load_into(b, tmp_path / "m")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
