"""Criteria against the torch/nn formulas."""

import numpy as np
import pytest

from tapernn import DTypeError, nn

R = np.random.default_rng(0)


@pytest.mark.parametrize("size_average", [True, False])
def test_mse(size_average):
    x, y = R.standard_normal((3, 4)), R.standard_normal((3, 4))
    c = nn.MSECriterion(size_average)
    n = x.size if size_average else 1
    assert np.isclose(c.forward(x, y), ((x - y) ** 2).sum() / n, rtol=1e-14)
    np.testing.assert_allclose(c.backward(x, y), 2 * (x - y) / n, rtol=1e-13)


@pytest.mark.parametrize("weights", [None, np.array([0.5, 2.0])])
def test_bce(weights):
    x, y = R.uniform(0.05, 0.95, (3, 2)), R.integers(0, 2, (3, 2)).astype(float)
    c = nn.BCECriterion(weights)
    w = 1.0 if weights is None else weights
    eps = 1e-12
    loss = -(w * (y * np.log(x + eps) + (1 - y) * np.log(1 - x + eps))).sum() / x.size
    assert np.isclose(c.forward(x, y), loss, rtol=1e-13)
    grad = -w * (y - x) / ((1 - x + eps) * (x + eps)) / x.size
    np.testing.assert_allclose(c.backward(x, y), grad, rtol=1e-8)


def test_class_nll_weights_and_ignore_index():
    x = np.log(R.dirichlet(np.ones(4), size=5))
    t = np.array([0, 3, 1, -100, 3])
    w = np.array([1.0, 2.0, 0.5, 3.0])
    c = nn.ClassNLLCriterion(w, ignore_index=-100)
    keep = t != -100
    wt = w[t[keep]]
    expected = -(wt * x[keep, t[keep]]).sum() / wt.sum()
    assert np.isclose(c.forward(x, t), expected, rtol=1e-13)
    g = c.backward(x, t)
    exp_g = np.zeros_like(x)
    exp_g[np.where(keep)[0], t[keep]] = -wt / wt.sum()
    np.testing.assert_allclose(g, exp_g, rtol=1e-13)
    assert np.isclose(
        nn.ClassNLLCriterion(size_average=False).forward(x, np.array([0, 1, 2, 3, 0])),
        -(x[np.arange(5), [0, 1, 2, 3, 0]]).sum(),
    )
    assert np.isclose(nn.ClassNLLCriterion().forward(x[0], np.array(2)), -x[0, 2])


def test_cross_entropy_is_log_softmax_plus_nll():
    s = R.standard_normal((3, 5))
    t = np.array([4, 0, 2])
    ls = s - np.log(np.exp(s).sum(1, keepdims=True))
    assert np.isclose(nn.CrossEntropyCriterion().forward(s, t), -ls[np.arange(3), t].mean())
    g = nn.CrossEntropyCriterion().backward(s, t)
    soft = np.exp(ls)
    soft[np.arange(3), t] -= 1
    np.testing.assert_allclose(g, soft / 3, rtol=1e-12)


@pytest.mark.parametrize("size_average", [False, True])
def test_sequencer_criterion_sums_steps(size_average):
    xs = [np.log(R.dirichlet(np.ones(3), size=2)) for _ in range(4)]
    ts = [R.integers(0, 3, 2) for _ in range(4)]
    inner = nn.ClassNLLCriterion()
    per_step = [inner.forward(x, t) for x, t in zip(xs, ts)]
    c = nn.SequencerCriterion(nn.ClassNLLCriterion(), size_average=size_average)
    k = 4 if size_average else 1
    assert np.isclose(c.forward(xs, ts), sum(per_step) / k, rtol=1e-13)
    grads = c.backward(xs, ts)
    for x, t, g in zip(xs, ts, grads):
        np.testing.assert_allclose(g, inner.backward(x, t) / k, rtol=1e-13)
    arr = c.forward(np.stack(xs), np.stack(ts))  # time on axis 0
    assert np.isclose(arr, sum(per_step) / k)


def _nll_case(dtype):
    x = np.log(np.full((4, 3), 1 / 3)).astype(dtype)
    return x, np.array([0, 1, 2, 0])


@pytest.mark.parametrize(
    "make, case",
    [
        (lambda: nn.MSECriterion(), lambda d: (np.ones((2, 3), d), np.zeros((2, 3)))),
        (lambda: nn.ClassNLLCriterion(), _nll_case),
        (
            lambda: nn.SequencerCriterion(nn.CrossEntropyCriterion()),
            lambda d: ([np.ones((2, 3), d)] * 2, [np.array([0, 1])] * 2),
        ),
    ],
)
def test_a_criterion_has_its_own_type_and_refuses_another(make, case):
    """Torch7: criteria have their own type (`criterion:float()`), and a FloatTensor input to a
    double criterion fails. Here too, with a DTypeError that says what to do, instead of quietly
    computing a float32 model's loss and gradient in float64."""
    x32, t = case(np.float32)
    c = make()
    with pytest.raises(DTypeError, match=r"input is float32.*float64.*\.float\(\)"):
        c.forward(x32, t)
    with pytest.raises(DTypeError, match="input is float32"):
        c.backward(x32, t)
    c.float()
    loss = c.forward(x32, t)
    grad = c.backward(x32, t)
    grads = grad if isinstance(grad, list) else [grad]
    assert all(g.dtype == np.float32 for g in grads)
    x64, _ = case(np.float64)
    with pytest.raises(DTypeError, match=r"input is float64.*float32.*\.double\(\)"):
        c.forward(x64, t)
    assert np.isclose(c.double().forward(x64, t), loss, rtol=1e-6)
