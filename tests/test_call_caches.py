"""What the Module API caches between calls to keep its fixed per-call cost small (issue 19) is
dropped when it must be: the parameter arrays zero_grad_parameters/update_parameters touch
(parameters rebound, modules added, blocks rebuilt, dtype changes, copies), and whatever a
forward reuses (mode switches, remember/forget, new input shapes). Each test drives a model
through such a change and checks the result against plain NumPy arithmetic."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tapernn import nn


def _steps(m, x, g, n=1, lr=0.1):
    for _ in range(n):
        m.zero_grad_parameters()
        m.forward(x)
        m.backward(x, g)
        m.update_parameters(lr)


def _grads(m):
    return {k: p.grad.copy() for k, p in m.named_parameters().items()}


def test_update_follows_a_rebound_parameter():
    lin = nn.Linear(3, 2)
    x, g = np.ones((4, 3)), np.ones((4, 2))
    _steps(lin, x, g)  # caches the arrays the update touches
    w = lin.named_parameters()["weight"]
    fresh = np.arange(6.0).reshape(2, 3)
    w.data = fresh  # rebinding: the update must reach the new array
    before = fresh.copy()
    lin.zero_grad_parameters()
    lin.forward(x)
    lin.backward(x, g)
    grad = w.grad.copy()
    lin.update_parameters(0.5)
    np.testing.assert_allclose(w.data, before - 0.5 * grad)
    assert w.data is fresh
    w.grad = np.full((2, 3), 7.0)  # and zero_grad the new gradient array
    lin.zero_grad_parameters()
    assert not w.grad.any()


def test_zero_grad_and_update_reach_modules_added_later():
    seq = nn.Sequential(nn.Linear(3, 3))
    x = np.ones((2, 3))
    _steps(seq, x, np.ones((2, 3)))
    seq.add(nn.Linear(3, 2))
    last = seq.get(1)
    w = last.named_parameters()["weight"]
    w.grad[...] = 5.0
    seq.zero_grad_parameters()
    assert not w.grad.any()
    before = w.data.copy()
    w.grad[...] = 1.0
    seq.update_parameters(0.25)
    np.testing.assert_allclose(w.data, before - 0.25)


def test_update_after_astype_and_flatten_parameters():
    seq = nn.Sequencer(nn.LSTM(3, 4))
    x, g = np.ones((2, 1, 3)), np.ones((2, 1, 4))
    _steps(seq, x, g)
    seq.float()
    params = seq.parameters()
    before = [p.data.copy() for p in params]
    for p in params:
        p.grad[...] = 1.0
    seq.update_parameters(0.5)
    for p, b in zip(params, before):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, b - 0.5)
    for p in params:  # rebind one member of a block, then pack again
        p.data = p.data.copy()
    seq.flatten_parameters()
    before = [p.data.copy() for p in params]
    seq.zero_grad_parameters()
    for p in params:
        assert not p.grad.any()
        p.grad[...] = 2.0
    seq.update_parameters(0.5)
    for p, b in zip(params, before):
        np.testing.assert_allclose(p.data, b - 1.0)


def test_a_deep_copy_updates_its_own_parameters():
    seq = nn.Sequencer(nn.FastLSTM(3, 4))
    x, g = np.ones((2, 1, 3)), np.ones((2, 1, 4))
    _steps(seq, x, g)
    twin = copy.deepcopy(seq)
    original = [p.data.copy() for p in seq.parameters()]
    for p in twin.parameters():
        p.grad[...] = 1.0
    twin.update_parameters(1.0)
    for p, o in zip(seq.parameters(), original):
        np.testing.assert_array_equal(p.data, o)  # the original is untouched
    for p, o in zip(twin.parameters(), original):
        np.testing.assert_allclose(p.data, o - 1.0)


def test_a_shared_module_in_two_trees_updates_in_both():
    shared = nn.Linear(2, 2)
    a, b = nn.Sequential(shared), nn.Sequential(nn.Linear(2, 2))
    x = np.ones((1, 2))
    _steps(a, x, np.ones((1, 2)))
    _steps(b, x, np.ones((1, 2)))
    b.add(shared)  # b's parameter list changes: the update must reach `shared` through b
    w = shared.named_parameters()["weight"]
    w.grad[...] = 1.0
    before = w.data.copy()
    b.update_parameters(1.0)
    np.testing.assert_allclose(w.data, before - 1.0)


@pytest.mark.parametrize("unroll", [True, False])
def test_training_evaluate_remember_and_shapes_keep_forward_right(unroll):
    """Forward reuses per-signature work: after mode switches, remember/forget and new shapes
    its outputs still equal a fresh model's."""
    rng = np.random.default_rng(0)
    seq = nn.Sequencer(nn.LSTM(3, 4), unroll=unroll)
    ref = copy.deepcopy(seq)
    xs = [rng.standard_normal((2, b, 3)) for b in (1, 2, 1)]
    for x in xs:
        np.testing.assert_allclose(seq.forward(x), copy.deepcopy(ref).forward(x))
    seq.evaluate()
    np.testing.assert_allclose(seq.forward(xs[1]), copy.deepcopy(ref).evaluate().forward(xs[1]))
    seq.training()
    seq.remember("both")
    first = seq.forward(xs[0]).copy()
    second = seq.forward(xs[0])  # starts from the first call's final state
    both = copy.deepcopy(ref).forward(np.concatenate([xs[0], xs[0]]))
    np.testing.assert_allclose(first, both[:2])
    np.testing.assert_allclose(second, both[2:])
    seq.forget()
    np.testing.assert_allclose(seq.forward(xs[0]), first)


def test_a_sequencer_added_after_the_first_call_still_forgets_before_each_forward():
    """Forward runs the before-forward hooks (a Sequencer's forget) of the model as it is now,
    not as it was at an earlier call."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 3))
    model = nn.Sequential(nn.Linear(3, 3))
    model.forward(x)
    model.add(nn.Sequencer(nn.LSTM(3, 3)))
    first = model.forward(x).copy()
    np.testing.assert_allclose(model.forward(x), first)  # starts from zeros again
    solo = nn.Sequential(copy.deepcopy(model.get(0)), copy.deepcopy(model.get(1)))
    np.testing.assert_allclose(solo.forward(x), first)


def _fields(m):
    return (
        [None if o is None else o.copy() for o in m.outputs],
        [None if i is None else i.copy() for i in m.inputs],
        {k: [None if s is None else s.copy() for s in v] for k, v in m.states.items()},
        int(m.step),
    )


def _assert_same_fields(a, b):
    assert a[3] == b[3]
    for x, y in zip(a[:2] + tuple(a[2].values()), b[:2] + tuple(b[2].values())):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            assert (u is None) == (v is None)
            if u is not None:
                np.testing.assert_array_equal(u, v)
    assert a[2].keys() == b[2].keys()


@pytest.mark.parametrize("how", ["unrolled", "rolled", "stepped", "stepped-rho", "evaluate"])
def test_grouped_field_writes_match_write_fields(how, monkeypatch):
    """The runtime writes a recurrent module's per-step fields grouped once per program
    (`_write_steps`); the result equals `_write_fields` given the items one by one."""
    from tapernn.nn.recurrent import AbstractRecurrent

    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 2, 3))
    base = nn.LSTM(3, 4)
    results = []
    for grouped in (True, False):
        monkeypatch.setattr(AbstractRecurrent._write_fields, "by_steps", grouped)
        lstm = copy.deepcopy(base)
        if how in ("unrolled", "rolled"):
            nn.Sequencer(lstm, unroll=how == "unrolled").forward(x)
        else:
            if how == "stepped-rho":
                lstm.max_bptt_step(2)
            if how == "evaluate":
                lstm.evaluate()
            for t in range(4):
                lstm.forward(x[t])
        results.append(_fields(lstm))
    _assert_same_fields(*results)
    assert results[0][3] == 4
