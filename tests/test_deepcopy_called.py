"""`copy.deepcopy` of a model that was already called (README: one copy per thread) runs with
the copy's own parameters, states and generators. Before, the copy kept the original's traced
programs, whose input bindings are closures deepcopy shares: the copy's forward read the
ORIGINAL's weights (a silent wrong answer: a copy whose weights were changed or trained
computed with the original's) and drew dropout masks / REINFORCE noise / NCE samples from the
original's generators. Oracle: a model built with the copy's weights, never called."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

rng = np.random.default_rng(0)
X2, X3 = rng.standard_normal((2, 3)), rng.standard_normal((4, 2, 3))


@pytest.mark.parametrize(
    "build, x",
    [
        (lambda: nn.Sequential(nn.Linear(3, 3), nn.Tanh()), X2),
        (lambda: nn.Sequencer(nn.FastLSTM(3, 3)), X3),
        (lambda: nn.Sequencer(nn.GRU(3, 3), unroll=True), X3),
    ],
)
def test_a_copy_of_a_called_model_runs_its_own_weights(build, x):
    tn.manual_seed(0)
    m = build()
    m.forward(x)
    m.backward(x, np.ones_like(m.output))
    m.forward(x)
    c = copy.deepcopy(m)
    for p in c.parameters():
        p.data[...] = 0.1 * np.arange(p.data.size).reshape(p.data.shape) / p.data.size
    got = np.array(c.forward(x), copy=True)  # (before anything else changes the tree)
    fresh = build()
    fresh.load_state_dict(c.state_dict())
    np.testing.assert_allclose(got, fresh.forward(x), rtol=1e-12)
    # it trains on its own: gradients land in the copy, the original is untouched
    before = [p.data.copy() for p in m.parameters()]
    c.zero_grad_parameters()
    c.backward(x, np.ones_like(c.output))
    fresh.zero_grad_parameters()
    fresh.backward(x, np.ones_like(fresh.output))
    for a, b in zip(c.parameters(), fresh.parameters()):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12)
    c.update_parameters(0.5)
    for a, b in zip(m.parameters(), before):
        np.testing.assert_array_equal(a.data, b)


@pytest.mark.parametrize("kind", ["dropout", "reinforce", "nce"])
def test_a_copy_draws_from_its_own_generator(kind):
    x = np.ones((4, 6))
    if kind == "dropout":
        d, inp = nn.Dropout(0.5, rng=np.random.default_rng(1)), x
    elif kind == "reinforce":
        d, inp = nn.ReinforceNormal(0.5, rng=np.random.default_rng(1)), x
    else:
        d = nn.NCEModule(6, 5, 3, np.ones(5), z=1.0, rng=np.random.default_rng(1))
        inp = [x, np.array([0, 1, 2, 3])]
    m = nn.Sequential(d)
    m.forward(inp)
    m.forward(inp)
    c = copy.deepcopy(m)
    a, b = c.forward(inp), m.forward(inp)  # each draws its generator's next values
    for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("kind", ["dropout", "reinforce"])
def test_a_generator_set_after_the_first_call_is_used(kind):
    make = (
        (lambda g: nn.Dropout(0.5, rng=g))
        if kind == "dropout"
        else (lambda g: nn.ReinforceNormal(0.5, rng=g))
    )
    x = np.ones((3, 4, 6))
    d = make(np.random.default_rng(1))
    m = nn.Sequencer(d)
    m.forward(x)
    m.forward(x)
    d.rng = np.random.default_rng(7)  # (before: the traced program kept drawing from the old)
    want = nn.Sequencer(make(np.random.default_rng(7))).forward(x)
    np.testing.assert_array_equal(m.forward(x), want)


@pytest.mark.parametrize(
    "build",
    [
        lambda: nn.Sequencer(nn.Sequential(nn.GRU(3, 4), nn.Linear(4, 4))),  # (KeyError '_data')
        lambda: nn.Sequencer(nn.LSTM(3, 4)),  # (numba: "cannot pickle '_thread.lock'")
    ],
)
def test_a_model_deep_copies_after_training(build, backend):
    tn.manual_seed(0)
    m = build()
    g = np.random.default_rng(1).standard_normal((4, 2, 4))
    for _ in range(3):
        m.forward(X3)
        m.zero_grad_parameters()
        m.backward(X3, g)
    c = copy.deepcopy(m)
    rec = [r for r in m.modules() if hasattr(r, "get_grad_hidden_state")][-1]
    rec_c = [r for r in c.modules() if hasattr(r, "get_grad_hidden_state")][-1]
    for a, b in zip(rec_c.get_grad_hidden_state(1), rec.get_grad_hidden_state(1)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(c.parameters(), m.parameters()):
        np.testing.assert_array_equal(a.grad, b.grad)
    np.testing.assert_allclose(c.forward(X3), m.forward(X3), rtol=1e-12)
