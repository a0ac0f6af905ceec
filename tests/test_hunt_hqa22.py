"""QA round hqa22: what a user met (each test fails on the code before its fix)."""

import copy

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def _model(kind: str):
    tn.manual_seed(3)
    return nn.Sequencer({"GRU": nn.GRU, "LSTM": nn.LSTM}[kind](4, 6))


def _same_state_grads(got, want, steps=(0, 1, 2)) -> None:
    for t in steps:
        for a, b in zip(got.get_grad_hidden_state(t), want.get_grad_hidden_state(t)):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def _rebound(m, how: str) -> None:
    """Rebind parameters' .data (takes them out of their block, nn.packing)."""
    params = m.parameters()
    for p in params if how == "all" else params[:1]:
        p.data = p.data.copy()


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("how", ["all", "one"])
def test_get_grad_hidden_state_after_a_parameter_is_rebound(kind, how):
    # a Sequencer's get_grad_hidden_state (also copy.deepcopy, which computes it) after
    # `p.data = other` raised "the state-gradient variant's inputs do not match the program's":
    # the program was traced with the parameter blocks, the tapped variant without them
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 6))
    want, got = _model(kind), _model(kind)
    for m in (want, got):
        m.forward(x)
        m.backward(x, g)
    _rebound(got, how)
    for m in (want, got):
        m.forward(x)
        m.backward(x, g)
    _same_state_grads(got, want)
    # the same backward again: a deepcopy computes the state gradients first
    for m in (want, got):
        m.forward(x)
        m.backward(x, g)
    _same_state_grads(copy.deepcopy(got), want, steps=(0,))


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_get_grad_hidden_state_after_the_blocks_are_rebuilt(kind):
    # the other way round: traced with loose parameters, then flatten_parameters() packs them
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 6))
    want, got = _model(kind), _model(kind)
    _rebound(got, "all")
    for m in (want, got):
        m.forward(x)
        m.backward(x, g)
    got.flatten_parameters()
    for m in (want, got):
        m.forward(x)
        m.backward(x, g)
    _same_state_grads(got, want)


@pytest.mark.parametrize("drop", ["forward", "forget", "evaluate"])
def test_get_grad_hidden_state_after_the_gradients_were_dropped_says_why(drop):
    # it said "the last backward went through steps none" after a backward through every step
    m = nn.Sequencer(nn.GRU(4, 6))
    x, g = np.ones((3, 2, 4)), np.ones((3, 2, 6))
    m.forward(x)
    m.backward(x, g)
    {"forward": lambda: m.forward(x), "forget": m.forget, "evaluate": m.evaluate}[drop]()
    with pytest.raises(tn.StateError, match=r"no backward since the last forward, forget\(\)"):
        m.get_grad_hidden_state(0)
