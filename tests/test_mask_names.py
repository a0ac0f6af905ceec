"""hqa18: a module masking zero rows says so where a user reads it. On main
`repr(nn.FastLSTM(3, 4).mask_zero())` was "nn.FastLSTM(3 -> 4)" and its diagram box "FastLSTM",
like an unmasked cell's, and `repr(nn.MaskZero(nn.GRU(3, 4), 1))` was "nn.MaskZero" (its module
not named; Torch7's decorators print "nn.MaskZero @ nn.GRU(...)")."""

import re

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


@pytest.mark.parametrize(
    "make, text",
    [
        (lambda: nn.FastLSTM(3, 4).mask_zero(), "nn.FastLSTM(3 -> 4, mask_zero)"),
        (
            lambda: nn.LSTM(3, 4, peephole=False).mask_zero(),
            "nn.LSTM(3 -> 4, no peephole, mask_zero)",
        ),
        (lambda: nn.GRU(3, 4).mask_zero(), "nn.GRU(3 -> 4, mask_zero)"),
        (lambda: nn.GRU(3, 4), "nn.GRU(3 -> 4)"),
        (
            lambda: nn.Recurrence(nn.Linear(7, 4), 4, 1).mask_zero(),
            "nn.Recurrence(mask_zero) @ nn.Linear(7 -> 4)",
        ),
        (lambda: nn.MaskZero(nn.GRU(3, 4), 1), "nn.MaskZero @ nn.GRU(3 -> 4)"),
        (
            lambda: nn.Sequencer(nn.MaskZero(nn.FastLSTM(3, 4), 1)),
            "nn.Sequencer @ nn.MaskZero @ nn.FastLSTM(3 -> 4)",
        ),
    ],
)
def test_repr_and_describe_name_the_mask(make, text):
    m = make()
    assert repr(m) == text
    assert m.describe() == text


def test_a_decorated_container_prints_its_tree():
    tree = "nn.Sequential {\n  (0): nn.Linear(3 -> 4)\n  (1): nn.Tanh\n}"
    assert (
        repr(nn.MaskZero(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), 1)) == f"nn.MaskZero @ {tree}"
    )
    assert (
        repr(nn.TrimZero(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), 1)) == f"nn.TrimZero @ {tree}"
    )
    assert nn.TrimZero(nn.GRU(3, 4), 1).describe() == "nn.TrimZero @ nn.GRU(3 -> 4)"
    step = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    assert repr(nn.Recurrence(step, 4, 1).mask_zero()) == f"nn.Recurrence(mask_zero) @ {tree}"


def _labels(model):
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    x[1, 0] = 0
    y = model.forward(x)
    model.backward(x, np.ones_like(y))
    src = tn.to_dot(model, level="module").source
    found = re.findall(r'label="([^"]*)\nt=\d+"', src)
    return {label for label in found}


@pytest.mark.parametrize(
    "make, names",
    [
        (
            lambda: nn.Sequencer(nn.Sequential(nn.FastLSTM(3, 4).mask_zero(), nn.Linear(4, 2))),
            {"FastLSTM (mask_zero)", "Linear"},
        ),
        (
            lambda: nn.Sequencer(
                nn.Sequential(nn.GRU(3, 4).mask_zero(), nn.GRU(4, 4), nn.GRU(4, 4).mask_zero())
            ),
            {"GRU layer 0 (mask_zero)", "GRU layer 1", "GRU layer 2 (mask_zero)"},
        ),
        (
            lambda: nn.Sequencer(nn.Sequential(nn.LSTM(3, 4), nn.MaskZero(nn.GRU(4, 4), 1))),
            {"LSTM", "MaskZero @ GRU"},
        ),
        (
            lambda: nn.BiSequencer(nn.FastLSTM(3, 4).mask_zero(), nn.FastLSTM(3, 4)),
            {"FastLSTM (fwd, mask_zero)", "FastLSTM (bwd)", "JoinTable(-1)"},
        ),
        (lambda: nn.Sequencer(nn.FastLSTM(3, 4)), {"FastLSTM"}),
    ],
)
def test_diagram_boxes_name_the_mask(make, names):
    assert _labels(make()) == names


def test_op_level_scope_clusters_are_named_by_their_module():
    """On main they were labelled by path only ("0.0"), the mask nowhere."""
    model = nn.Sequencer(nn.Sequential(nn.FastLSTM(3, 4).mask_zero(), nn.MaskZero(nn.GRU(4, 4), 1)))
    x = np.random.default_rng(0).standard_normal((2, 2, 3))
    x[0, 1] = 0
    y = model.forward(x)
    model.backward(x, np.ones_like(y))
    src = tn.to_dot(model, level="op", cluster_by="scope").source
    labels = set(re.findall(r'label="([^"\n]*\(0[.\w]*\))"', src))
    assert {
        "Sequential  (0)",
        "FastLSTM(3 -> 4, mask_zero)  (0.0)",
        "Linear(3 -> 16)  (0.0.i2g)",
        "MaskZero @ GRU(4 -> 4)  (0.1)",
        "GRU(4 -> 4)  (0.1.0)",
    } <= labels, labels
