"""The hidden-state API (Element-RNN test `getHiddenState`): Recursor and Sequencer reach their
module's; set_grad_hidden_state REPLACES the gradient step t + 1 sends into the state of step t
(Torch7 setGradHiddenState); get_grad_hidden_state(t) exists for every step of the last backward."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

D, H, B, T = 3, 4, 2, 4
CELLS = {"LSTM": lambda: nn.LSTM(D, H), "GRU": lambda: nn.GRU(D, H)}


def inputs(seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))


def twin(m, name):
    other = CELLS[name]()
    other.load_state_dict(m.state_dict())
    return other


def state_like(m, rng):
    return tuple(rng.standard_normal((B, H)) for _ in m.state_names)


def close(a, b, what=""):
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-12, err_msg=what)


def run(m, x, g, how, sets=(), start=None):
    """Forward T steps (by hand, through a Recursor or a Sequencer), apply the sets, backward.
    Returns (grad inputs, parameter gradients)."""
    m.forget()
    if start is not None:
        m.set_initial_state(start)
    m.zero_grad_parameters()
    if how == "sequencer":
        seq = nn.Sequencer(m)
        seq.forward(x)
        for t, v in sets:
            seq.set_grad_hidden_state(t, v)
        gx = list(seq.backward(x, g))
    else:
        runner = nn.Recursor(m) if how == "recursor" else m
        for t in range(len(x)):
            runner.forward(x[t])
        for t, v in sets:
            runner.set_grad_hidden_state(t, v)
        gx = [runner.backward(x[t], g[t]) for t in reversed(range(len(x)))][::-1]
    return gx, [p.grad.copy() for p in m.parameters()]


@pytest.mark.parametrize("name", list(CELLS))
def test_recursor_and_sequencer_reach_the_hidden_state_of_their_module(name):
    tn.manual_seed(0)
    m = CELLS[name]()
    x, g = inputs()
    start = state_like(m, np.random.default_rng(9))
    ref = twin(m, name).set_initial_state(start)
    ref_out = [ref.forward(x[t]) for t in range(T)]
    for wrapper in (nn.Recursor(twin(m, name)), nn.Sequencer(twin(m, name))):
        wrapper.set_initial_state(start)
        out = (
            wrapper.forward(x)
            if isinstance(wrapper, nn.Sequencer)
            else [wrapper.forward(x[t]) for t in range(T)]
        )
        close(out, ref_out, f"{wrapper.describe()} outputs from the initial state")
        for t in range(T):
            close(wrapper.get_hidden_state(t), ref.get_hidden_state(t), f"state {t}")
        if isinstance(wrapper, nn.Recursor):
            for t in reversed(range(T)):
                wrapper.backward(x[t], g[t])
        else:
            wrapper.backward(x, g)
        for t in reversed(range(T)):
            ref.backward(x[t], g[t])
        close(wrapper.get_grad_initial_state(), ref.get_grad_initial_state(), "grad initial")
        for t in range(T):
            close(wrapper.get_grad_hidden_state(t), ref.get_grad_hidden_state(t), f"grad {t}")
        ref.forget().set_initial_state(start)
        ref_out = [ref.forward(x[t]) for t in range(T)]


def test_recursor_over_a_stack_finds_its_one_recurrent_module_or_says_why_not():
    rec = nn.Recursor(nn.Sequential(nn.Linear(D, D), nn.GRU(D, H)))
    rec.forward(np.ones((B, D)))
    assert rec.get_hidden_state(0)[0].shape == (B, H)
    two = nn.Recursor(nn.Sequential(nn.GRU(D, D), nn.GRU(D, H)))
    with pytest.raises(tn.StateError, match="exactly one recurrent module"):
        two.get_hidden_state(0)


@pytest.mark.parametrize("how", ["hand", "recursor", "sequencer"])
@pytest.mark.parametrize("name", list(CELLS))
def test_set_grad_hidden_state_replaces_the_gradient_from_the_next_step(name, how):
    tn.manual_seed(0)
    m = CELLS[name]()
    x, g = inputs()
    extra = state_like(m, np.random.default_rng(4))
    a = twin(m, name)
    gx, grads = run(a, x, g, how, sets=[(1, extra)])
    # oracle: steps 2..3 from the state after step 1, untouched; steps 0..1 alone with `extra`
    # as the seed of step 1's state (at a last step, set = seed)
    after1 = twin(m, name)
    for t in range(2):
        after1.forward(x[t])
    late_gx, late = run(twin(m, name), x[2:], g[2:], "hand", start=after1.get_hidden_state(1))
    early_gx, early = run(twin(m, name), x[:2], g[:2], "hand", sets=[(-1, extra)])
    close(gx, early_gx + late_gx, "grad inputs")
    close(grads, [u + v for u, v in zip(early, late)], "parameter gradients")
    close(a.get_grad_hidden_state(1), extra, "the set value is what flowed")


@pytest.mark.parametrize("how", ["hand", "sequencer"])
@pytest.mark.parametrize("name", list(CELLS))
def test_get_grad_hidden_state_every_step_and_the_recipe_to_add(name, how):
    tn.manual_seed(0)
    m = CELLS[name]()
    x, g = inputs()
    a = twin(m, name)
    plain_gx, plain = run(a, x, g, how)
    close(a.get_grad_hidden_state(T - 1), [np.zeros((B, H))] * len(m.state_names), "newest")
    # step t's: what the steps after t send back into the state of step t
    for t in range(T - 1):
        ref = twin(m, name)
        for k in range(t + 1):
            ref.forward(x[k])
        run(ref2 := twin(m, name), x[t + 1 :], g[t + 1 :], "hand", start=ref.get_hidden_state(t))
        close(a.get_grad_hidden_state(t), ref2.get_grad_initial_state(), f"step {t}")
    # to add: read it, set the sum; equals the plain gradients plus `extra` seeded at step 1
    extra = state_like(m, np.random.default_rng(4))
    added = [u + v for u, v in zip(a.get_grad_hidden_state(1), extra)]
    gx, grads = run(a, x, g, how, sets=[(1, added)])
    seeded_gx, seeded = run(twin(m, name), x[:2], np.zeros_like(g[:2]), "hand", sets=[(-1, extra)])
    close(gx, [u + v for u, v in zip(plain_gx, seeded_gx + [0, 0])], "added grad inputs")
    close(grads, [u + v for u, v in zip(plain, seeded)], "added parameter gradients")


def test_stepping_by_hand_reads_the_gradient_of_a_step_before_its_backward():
    tn.manual_seed(0)
    m = nn.LSTM(D, H)
    x, g = inputs()
    for t in range(T):
        m.forward(x[t])
    for t in (3, 2):
        m.backward(x[t], g[t])
    from_step2 = m.get_grad_hidden_state(1)  # Torch7: gradOutputs[t] once step t+1 is done
    ref = twin(m, "LSTM")
    for t in range(2):
        ref.forward(x[t])
    late = twin(m, "LSTM").set_initial_state(ref.get_hidden_state(1))
    for t in (2, 3):
        late.forward(x[t])
    for t in (3, 2):
        late.backward(x[t], g[t])
    close(from_step2, late.get_grad_initial_state())
    with pytest.raises(tn.StateError, match="no gradient for the state of step 0"):
        m.get_grad_hidden_state(0)


def test_states_and_gradients_are_checked_against_state_names():
    lstm = nn.LSTM(D, H)
    with pytest.raises(tn.ShapeError, match="expected 2 state arrays"):
        lstm.set_initial_state(np.zeros((B, H)))
    with pytest.raises(tn.ShapeError, match="one array per state name"):
        lstm.set_initial_state(([np.zeros((B, H))], np.zeros((B, H))))  # no table states
    with pytest.raises(tn.ShapeError, match="expected 2 gradient arrays"):
        lstm.set_grad_hidden_state(0, (np.zeros((B, H)),))
    lstm.forward(np.ones((B, D)))
    lstm.set_grad_hidden_state(0, (np.zeros((B, H + 1)), np.zeros((B, H))))
    with pytest.raises(tn.ShapeError, match="'h' has shape"):
        lstm.backward(np.ones((B, D)), np.ones((B, H)))
