"""nn.Recurrent whose start/input/feedback/transfer/merge work on tables, so the hidden state is a
list of arrays (Element-RNN test `Recurrent_TestTable`): stepped by hand, in a Sequencer, in
chunks, with the hidden-state API, against hand-written NumPy equations."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.testing import gradcheck_module

I, O, B, T = 5, 3, 2, 6


class Add(nn.Module):
    """y = x + bias (torch/nn Add), for the start module."""

    def __init__(self, n):
        super().__init__()
        self.parameter("bias", (n,))

    def build(self, x):
        return x + self.bias


def table_recurrent():
    def feedback():
        return nn.Sequential(nn.Linear(O, 4), nn.Sigmoid(), nn.Linear(4, O))

    return nn.Recurrent(
        nn.ParallelTable(Add(O), Add(O)),
        nn.ParallelTable(nn.Linear(I, O), nn.Linear(I, O)),
        nn.ParallelTable(feedback(), feedback()),
        nn.ParallelTable(nn.Sigmoid(), nn.Sigmoid()),
        merge=nn.ParallelTable(nn.CAddTable(), nn.CAddTable()),
    )


def numpy_outputs(rec, xs):
    """The Torch7 equations: h_0 = transfer(start(input(x_0))); later steps
    h_t = transfer(merge([input(x_t), feedback(h_{t-1})])), each a table of two."""
    p = {k: v.data for k, v in rec.named_parameters().items()}

    def sig(z):
        return 1 / (1 + np.exp(-z))

    def lin(name, x):
        return x @ p[name + ".weight"].T + p[name + ".bias"]

    def feedback(k, h):
        return lin(f"feedback.{k}.2", sig(lin(f"feedback.{k}.0", h)))

    outs, h = [], None
    for x1, x2 in xs:
        a = [lin("input.0", x1), lin("input.1", x2)]
        if h is None:
            h = [sig(a[0] + p["start.0.bias"]), sig(a[1] + p["start.1.bias"])]
        else:  # merge = ParallelTable(CAddTable, CAddTable) of [input(x), feedback(h)]
            h = [sig(a[0] + a[1]), sig(feedback(0, h[0]) + feedback(1, h[1]))]
        outs.append(h)
    return outs


def steps(seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal((B, I)), rng.standard_normal((B, I))] for _ in range(T)]


def test_table_state_steps_by_hand_as_in_element_rnn():
    tn.manual_seed(0)
    rec = table_recurrent()
    xs = steps()
    outs = [[np.array(v) for v in rec.forward(x)] for x in xs]
    for t, (got, want) in enumerate(zip(outs, numpy_outputs(rec, xs))):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-13, err_msg=f"step {t}")
    h = rec.get_hidden_state(2)
    assert len(h) == 1 and isinstance(h[0], list) and len(h[0]) == 2
    np.testing.assert_array_equal(h[0][1], outs[2][1])
    err = np.random.default_rng(1).standard_normal((B, O))
    for t in reversed(range(T)):
        gx = rec.backward(xs[t], [err, err.copy()])
        assert isinstance(gx, list) and gx[0].shape == (B, I)


def test_table_state_sequencer_equals_stepping_and_gradchecks():
    tn.manual_seed(0)
    rec = table_recurrent()
    twin = table_recurrent()
    twin.load_state_dict(rec.state_dict())
    xs = steps()
    g = [[np.ones((B, O)), -np.ones((B, O))] for _ in range(T)]
    seq = nn.Sequencer(rec)
    out = seq.forward(xs)
    rec.zero_grad_parameters()
    gx = seq.backward(xs, g)
    by_hand = [twin.forward(x) for x in xs]
    twin.zero_grad_parameters()
    gh = [twin.backward(xs[t], g[t]) for t in reversed(range(T))][::-1]
    for t in range(T):
        for k in range(2):
            np.testing.assert_allclose(out[t][k], by_hand[t][k], rtol=1e-13)
            np.testing.assert_allclose(gx[t][k], gh[t][k], rtol=1e-11, atol=1e-13)
    for p, q in zip(rec.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-11, atol=1e-13, err_msg=p.name)
    model = nn.Sequencer(
        nn.Sequential(nn.ConcatTable(nn.Identity(), nn.Identity()), rec, nn.JoinTable(-1))
    )
    x = np.random.default_rng(2).standard_normal((4, B, I))
    assert gradcheck_module(model, nn.MSECriterion(), x, np.zeros((4, B, 2 * O)), max_entries=8)


def test_table_state_initial_state_and_remembered_chunks():
    tn.manual_seed(0)
    rec = table_recurrent()
    xs = steps()
    full = nn.Sequencer(rec).forward(xs)
    start = [np.array(v) for v in rec.get_hidden_state(2)[0]]
    other = table_recurrent()
    other.load_state_dict(rec.state_dict())
    other.set_initial_state(([start[0], start[1]],))
    rest = nn.Sequencer(other).forward(xs[3:])
    for t in range(3):
        for k in range(2):
            np.testing.assert_allclose(rest[t][k], full[3 + t][k], rtol=1e-13)
    with pytest.raises(tn.ShapeError):
        other.set_initial_state((start[0], start[1]))  # two states; Recurrent has one (a table)
    chunked = nn.Sequencer(other.forget()).remember("both")
    got = chunked.forward(xs[:2]) + chunked.forward(xs[2:])
    for t in range(T):
        for k in range(2):
            np.testing.assert_allclose(got[t][k], full[t][k], rtol=1e-13)
