"""Behaviours that replace silent wrong answers on odd input (API.md section 8): backward with
a new input (Torch7's gradient at that input, or a clear refusal), NaN inputs and losses without
leaked NumPy warnings. The table of bad calls is test_bad_inputs.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def test_linear_backward_with_a_new_input_uses_it_as_torch7():
    """Torch7's Linear:backward(x2, g) accumulates g^T x2 whatever the last forward saw."""
    rng = np.random.default_rng(0)
    m = nn.Linear(3, 2)
    x1, x2, g = (
        rng.standard_normal((4, 3)),
        rng.standard_normal((4, 3)),
        rng.standard_normal((4, 2)),
    )
    y1 = m.forward(x1)
    m.zero_grad_parameters()
    gx = m.backward(x2, g)
    np.testing.assert_allclose(m.weight.grad, g.T @ x2, rtol=1e-12)
    np.testing.assert_allclose(m.bias.grad, g.sum(0), rtol=1e-12)
    np.testing.assert_allclose(gx, g @ m.weight.data, rtol=1e-12)
    np.testing.assert_array_equal(m.output, y1)  # backward does not rewrite the output
    m.backward(x1, g)  # and the forward's own input still gives its gradient (accumulated)
    np.testing.assert_allclose(m.weight.grad, g.T @ x2 + g.T @ x1, rtol=1e-12)


def test_backward_with_an_input_of_another_shape_is_refused():
    m = nn.Linear(3, 2)
    m.forward(np.ones((4, 3)))
    with pytest.raises(tn.ShapeError, match=r"backward input has shape \(5, 3\).*\(4, 3\)"):
        m.backward(np.ones((5, 3)), np.ones((5, 2)))


def test_tanh_backward_with_a_new_input_is_the_gradient_at_that_input():
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    x1, x2, g = (
        rng.standard_normal((2, 3)),
        rng.standard_normal((2, 3)),
        rng.standard_normal((2, 3)),
    )
    model.forward(x1)
    model.zero_grad_parameters()
    gx = model.backward(x2, g)
    w, b = model[0].weight.data, model[0].bias.data
    d = g * (1 - np.tanh(x2 @ w.T + b) ** 2)
    np.testing.assert_allclose(gx, d @ w, rtol=1e-12)
    np.testing.assert_allclose(model[0].weight.grad, d.T @ x2, rtol=1e-12)


def test_sequencer_backward_with_a_new_input_equals_forward_then_backward_at_it():
    import copy

    rng = np.random.default_rng(2)
    model = nn.Sequencer(nn.Sequential(nn.LSTM(3, 4), nn.Linear(4, 2)))
    twin = copy.deepcopy(model)
    x1, x2 = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 3))
    g = rng.standard_normal((5, 2, 2))
    model.forward(x1)
    gx = model.backward(x2, g)
    twin.forward(x2)
    np.testing.assert_allclose(gx, twin.backward(x2, g), rtol=1e-12, atol=1e-14)
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-14)


def test_dropout_backward_with_a_new_input_reuses_the_forward_mask():
    tn.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5))
    x1, x2 = np.ones((2, 4)), np.full((2, 4), 2.0)
    y = model.forward(x1)
    mask = (y != 0).astype(float) * 2.0
    gx = model.backward(x2, np.ones((2, 6)))
    np.testing.assert_allclose(gx, mask @ model[0].weight.data, rtol=1e-12)


def test_nan_inputs_leak_no_numpy_warnings():
    x = np.full((2, 1, 3), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = nn.Sequencer(nn.LSTM(3, 2)).forward(x)
        assert np.isnan(out).all()
        model = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
        model.forward(np.full((2, 3), np.inf))
        model.backward(np.full((2, 3), np.inf), np.ones((2, 2)))


@pytest.mark.parametrize(
    "crit, target",
    [
        (nn.MSECriterion(), np.zeros((2, 3))),
        (nn.CrossEntropyCriterion(), np.array([0, 1])),
        (nn.ClassNLLCriterion(), np.array([0, 1])),
        (nn.SequencerCriterion(nn.MSECriterion()), np.zeros((2, 3))),
    ],
)
def test_nan_in_a_loss_raises_without_numpy_warnings(crit, target):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(tn.NumericError, match="NaN"):
            crit.forward(np.full((2, 3), np.nan), target)
