"""QA round as a user (hqa27): ClassNLLCriterion / CrossEntropyCriterion with integer targets of
every width. The program found the rows to ignore by `|t - ignore_index| > 0` in the targets'
own dtype: unsigned targets (uint8 ids from bytes) raised NumPy's bare OverflowError ("Python
integer -100 out of bounds for uint8"), and int8 target 28 wrapped (28 + 100 = -128, whose abs
is -128 in int8) and was silently ignored. Checked against hand-written NumPy equations."""

import numpy as np
import pytest

from tapernn import nn

INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


def nll(logp, target, weights=None, size_average=True, ignore_index=-100):
    """torch/nn ClassNLLCriterion: -sum_i w[t_i] logp[i, t_i] over rows not ignored, divided
    by the sum of their weights when size_average; returns (loss, grad_input)."""
    t = np.asarray(target, dtype=np.int64)
    keep = t != ignore_index
    rows, cls = np.nonzero(keep)[0], t[keep]
    w = np.ones(logp.shape[1]) if weights is None else np.asarray(weights, float)
    loss = -np.sum(w[cls] * logp[rows, cls])
    grad = np.zeros_like(logp)
    grad[rows, cls] = -w[cls]
    if size_average:
        loss, grad = loss / w[cls].sum(), grad / w[cls].sum()
    return loss, grad


def log_probs(batch, n_class, seed=0):
    return np.log(np.random.default_rng(seed).dirichlet(np.ones(n_class), size=batch))


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_class_nll_targets_of_every_integer_dtype(dtype):
    logp = log_probs(4, 40)
    target = np.array([0, 28, 39, 5], dtype=dtype)  # (28: int8's wrap, 28 + 100 = -128)
    for size_average in (True, False):
        crit = nn.ClassNLLCriterion(size_average=size_average)
        loss, grad = nll(logp, target, size_average=size_average)
        assert crit.forward(logp, target) == pytest.approx(loss, rel=1e-14)
        np.testing.assert_allclose(crit.backward(logp, target), grad, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.uint64])
def test_class_nll_ignore_index_with_narrow_targets(dtype):
    logp = log_probs(5, 40, seed=1)
    weights = np.random.default_rng(2).random(40) + 0.5
    target = np.array([3, 28, 7, 3, 30], dtype=dtype)
    crit = nn.ClassNLLCriterion(weights=weights, ignore_index=3)
    loss, grad = nll(logp, target, weights, ignore_index=3)
    assert crit.forward(logp, target) == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(crit.backward(logp, target), grad, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_cross_entropy_with_narrow_targets(dtype):
    scores = np.random.default_rng(3).normal(size=(3, 30))
    target = np.array([28, 0, 29], dtype=dtype)
    logp = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    loss, _ = nll(logp, target)
    crit = nn.CrossEntropyCriterion()
    assert crit.forward(scores, target) == pytest.approx(loss, rel=1e-14)
    grad = np.exp(logp)
    grad[np.arange(3), target.astype(int)] -= 1
    np.testing.assert_allclose(crit.backward(scores, target), grad / 3, rtol=1e-12, atol=1e-16)


def test_sequencer_criterion_of_uint8_targets():
    logps = np.stack([log_probs(2, 30, seed=s) for s in range(3)])
    targets = np.array([[28, 1], [255 % 30, 0], [29, 28]], dtype=np.uint8)
    crit = nn.SequencerCriterion(nn.ClassNLLCriterion())
    expected = sum(nll(logps[t], targets[t])[0] for t in range(3))
    assert crit.forward(logps, targets) == pytest.approx(expected, rel=1e-14)


# Torch7's criterion:backward(input, target) computes at the values it is given. Criterion.backward
# re-ran the forward only when the arrays differed from the last forward's -- compared with those
# very arrays, so an input or target changed in place since the forward (a reused buffer) kept
# the old forward's gradient without a word.


def test_backward_after_the_input_changed_in_place():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    crit = nn.MSECriterion()
    crit.forward(x, y)
    x[...] = rng.normal(size=(3, 4))
    np.testing.assert_allclose(crit.backward(x, y), 2 * (x - y) / x.size, rtol=1e-14, atol=0)
    assert crit.output == pytest.approx(np.mean((x - y) ** 2), rel=1e-14)


def test_backward_after_the_target_changed_in_place():
    logp = log_probs(4, 6, seed=5)
    target = np.array([0, 1, 2, 3])
    crit = nn.ClassNLLCriterion()
    crit.forward(logp, target)
    target[...] = [5, 4, 3, 2]
    np.testing.assert_allclose(crit.backward(logp, target), nll(logp, target)[1], rtol=1e-14)


def test_sequencer_criterion_backward_after_a_step_changed_in_place():
    rng = np.random.default_rng(6)
    xs = [rng.normal(size=(2, 3)) for _ in range(3)]
    ys = [rng.normal(size=(2, 3)) for _ in range(3)]
    crit = nn.SequencerCriterion(nn.MSECriterion())
    crit.forward(xs, ys)
    xs[1] *= 3.0
    grads = crit.backward(xs, ys)
    for g, x, y in zip(grads, xs, ys):
        np.testing.assert_allclose(g, 2 * (x - y) / x.size, rtol=1e-14, atol=0)
