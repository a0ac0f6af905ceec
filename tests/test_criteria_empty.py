"""Every criterion on an empty batch or sequence, and ClassNLL with no target to average:
a ShapeError / ValueRangeError saying what was expected. Before: MSE raised NumericError
("check the learning rate"), ClassNLL returned 0.0 for B = 0 and -0.0 with every target
ignored, SequencerCriterion / RepeaterCriterion raised IndexError, VRClassReward
ZeroDivisionError, MaskZeroCriterion a bare ValueError. Torch7's documented case (#128: a
MaskZeroCriterion batch that is all padding) keeps loss 0 and gradient 0."""

from __future__ import annotations

import numpy as np
import pytest

from tapernn import nn
from tapernn.errors import ShapeError, ValueRangeError

E = np.zeros((0, 4))
T0 = np.zeros(0, dtype=np.int64)
LOGP = np.log(np.full((2, 4), 0.25))

EMPTY = {
    "MSECriterion": [
        lambda: nn.MSECriterion().forward(E, E),
        lambda: nn.MSECriterion(size_average=False).forward(E, E),
    ],
    "BCECriterion": [lambda: nn.BCECriterion().forward(E, E)],
    "ClassNLLCriterion": [
        lambda: nn.ClassNLLCriterion().forward(E, T0),
        lambda: nn.ClassNLLCriterion(size_average=False).forward(E, T0),
    ],
    "CrossEntropyCriterion": [lambda: nn.CrossEntropyCriterion().forward(E, T0)],
    "SequencerCriterion": [
        lambda: nn.SequencerCriterion(nn.MSECriterion()).forward(
            np.zeros((0, 2, 4)), np.zeros((0, 2, 4))
        ),
        lambda: nn.SequencerCriterion(nn.MSECriterion()).forward([], []),
        lambda: nn.SequencerCriterion(nn.MSECriterion()).forward(
            np.zeros((3, 0, 4)), np.zeros((3, 0, 4))
        ),
    ],
    "RepeaterCriterion": [
        lambda: nn.RepeaterCriterion(nn.MSECriterion()).forward(
            np.zeros((0, 2, 4)), np.zeros((2, 4))
        )
    ],
    "MaskZeroCriterion": [lambda: nn.MaskZeroCriterion(nn.ClassNLLCriterion()).forward(E, T0)],
    "NCECriterion": [
        lambda: nn.NCECriterion().forward(
            [np.zeros(0), np.zeros((0, 2)), np.zeros(0), np.zeros((0, 2))]
        )
    ],
    "VRClassReward": [
        lambda: nn.VRClassReward(nn.ReinforceNormal(0.1)).forward([E, np.zeros(0)], T0)
    ],
}


def test_every_criterion_is_covered():
    names = {
        n
        for n in dir(nn)
        if isinstance(getattr(nn, n), type) and issubclass(getattr(nn, n), nn.Criterion)
    }
    assert names - {"Criterion"} == set(EMPTY)


@pytest.mark.parametrize(
    "name, k", [(n, k) for n, calls in EMPTY.items() for k in range(len(calls))]
)
def test_an_empty_batch_or_sequence_is_refused_by_name(name, k):
    with pytest.raises(ShapeError, match="expects at least one (element|step)"):
        EMPTY[name][k]()


@pytest.mark.parametrize("size_average", [True, False])
@pytest.mark.parametrize("make", [nn.ClassNLLCriterion, nn.CrossEntropyCriterion])
def test_every_target_ignored_is_refused(make, size_average):
    crit = make(size_average=size_average)
    with pytest.raises(ValueRangeError, match="at least one target that is not ignore_index"):
        crit.forward(LOGP, np.array([-100, -100]))
    assert crit.forward(LOGP, np.array([-100, 1])) == pytest.approx(np.log(4))  # one is enough


def test_zero_total_weight_is_refused_when_averaging():
    crit = nn.ClassNLLCriterion(weights=np.array([0.0, 1, 1, 1]))
    with pytest.raises(ValueRangeError, match="weights sum to 0"):
        crit.forward(LOGP, np.array([0, 0]))
    summed = nn.ClassNLLCriterion(weights=np.array([0.0, 1, 1, 1]), size_average=False)
    assert summed.forward(LOGP, np.array([0, 0])) == 0.0  # a sum of zero weights is 0


@pytest.mark.parametrize("inner", [nn.ClassNLLCriterion, nn.MSECriterion])
def test_mask_zero_all_padding_is_zero_loss_and_gradient(inner):
    crit = nn.MaskZeroCriterion(inner())
    x = np.zeros((2, 4))
    t = np.array([1, 2]) if inner is nn.ClassNLLCriterion else np.ones((2, 4))
    loss = crit.forward(x, t)
    assert loss == 0.0 and np.copysign(1.0, loss) == 1.0  # (+0.0, not -0.0)
    np.testing.assert_array_equal(crit.backward(x, t), np.zeros((2, 4)))
