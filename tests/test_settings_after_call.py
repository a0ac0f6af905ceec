"""A model changed after its first call runs as changed: a child added or replaced
(`Sequential.add`), a module's setting (`Dropout.p`, `HardTanh.max_value`) or a child's mode
(`model.get(1).evaluate()`) set between calls. Before nn/config_key.py the program traced for
the first call ran again unchanged: a silent wrong answer. Oracle: a model built with the
change from the start."""

from __future__ import annotations

import enum

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

rng = np.random.default_rng(0)
X2 = rng.standard_normal((3, 4))
X3 = rng.standard_normal((5, 3, 4))


def results(m, x):
    """Output, input gradient and parameter gradients of one forward/backward."""
    y = np.array(m.forward(x), copy=True)
    m.zero_grad_parameters()
    gx = np.array(m.backward(x, np.full_like(y, 0.3)), copy=True)
    return [y, gx] + [p.grad.copy() for p in m.parameters()]


def assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def changed_vs_fresh(build, change, x, seed=5):
    """`change` applied after two calls (the steady path planned) vs before any call."""
    tn.manual_seed(1)
    m = build()
    results(m, x)
    results(m, x)
    change(m)
    tn.manual_seed(seed)
    got = results(m, x)
    tn.manual_seed(1)
    fresh = build()
    change(fresh)
    tn.manual_seed(seed)
    return got, results(fresh, x)


def test_a_layer_added_after_a_call_runs():
    got, want = changed_vs_fresh(
        lambda: nn.Sequential(nn.Linear(4, 4)), lambda m: m.add(nn.Tanh()), X2
    )
    assert_same(got, want)
    assert np.all(np.abs(got[0]) < 1)  # the tanh ran


def test_a_replaced_child_runs():
    got, want = changed_vs_fresh(
        lambda: nn.Sequential(nn.Linear(4, 4), nn.Tanh()),
        lambda m: m.add_child("1", nn.Sigmoid()),
        X2,
    )
    assert_same(got, want)
    assert np.all(got[0] > 0)  # the sigmoid ran


@pytest.mark.parametrize("unroll", [None, True])
def test_a_setting_changed_after_a_call_is_used(unroll):
    def build():
        return nn.Sequencer(nn.Sequential(nn.Linear(4, 6), nn.HardTanh()), unroll=unroll)

    got, want = changed_vs_fresh(build, lambda m: setattr(m.get(0).get(1), "max_value", 0.1), X3)
    assert_same(got, want)
    assert got[0].max() <= 0.1 + 1e-12


@pytest.mark.parametrize("stepwise", [False, True])
def test_dropout_p_changed_between_calls(stepwise):
    d = nn.Dropout(0.5)
    model = d if stepwise else nn.Sequencer(d)
    x = np.ones((200, 50)) if stepwise else np.ones((3, 200, 50))
    model.forward(x)
    model.forward(x)
    d.p = 0.2
    y = model.forward(x)
    assert y.max() == pytest.approx(1 / 0.8)  # kept entries scaled by 1 / (1 - p)
    assert 0.15 < np.mean(y == 0) < 0.25


def test_a_child_put_in_evaluation_mode_alone():
    def build():
        return nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))

    got, want = changed_vs_fresh(build, lambda m: m.get(1).evaluate(), X2)
    assert_same(got, want)
    tn.manual_seed(1)
    lin = nn.Linear(4, 4)
    np.testing.assert_allclose(got[0], lin.forward(X2), rtol=1e-12)  # dropout is the identity


def test_unchanged_settings_and_mode_switches_do_not_retrace():
    m = nn.Sequencer(nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.3)))
    for _ in range(3):
        m.training()
        results(m, X3)
        m.evaluate()
        m.forward(X3)
    count = m.trace_count
    m.training()
    m.get(0).get(1).p = 0.3  # the same value: nothing changes
    for _ in range(3):
        results(m, X3)
    assert m.trace_count == count
    m.get(0).get(1).p = 0.25
    results(m, X3)
    results(m, X3)
    assert m.trace_count == count + 1  # traced once for the new setting


def _log_probs():
    x = rng.standard_normal((6, 4))
    return x - np.log(np.exp(x).sum(1, keepdims=True)), np.array([0, 1, 2, 3, 1, 0])


@pytest.mark.parametrize(
    "make, change",
    [
        (nn.ClassNLLCriterion, lambda c: c.weights.__setitem__(slice(None), [1, 2, 3, 4])),
        (nn.ClassNLLCriterion, lambda c: setattr(c, "weights", np.array([1.0, 2, 3, 4]))),
        (nn.CrossEntropyCriterion, lambda c: c.weights.__setitem__(slice(None), [1, 2, 3, 4])),
        (nn.BCECriterion, lambda c: c.weights.__setitem__(slice(None), [1, 2, 3, 4])),
        (nn.ClassNLLCriterion, lambda c: setattr(c, "ignore_index", 1)),
    ],
)
def test_criterion_weights_changed_between_calls(make, change):
    x, t = _log_probs()
    if make is nn.BCECriterion:
        x, t = np.exp(x), (rng.random((6, 4)) > 0.5).astype(float)
    crit = make(weights=np.ones(4))
    for _ in range(2):
        crit.forward(x, t)
        crit.backward(x, t)
    change(crit)
    fresh = make(weights=np.ones(4))
    change(fresh)
    assert crit.forward(x, t) == pytest.approx(fresh.forward(x, t), rel=1e-12)
    np.testing.assert_allclose(crit.backward(x, t), fresh.backward(x, t), rtol=1e-12)


def test_weights_changed_at_every_call_keep_one_program():
    x, t = _log_probs()
    crit = nn.ClassNLLCriterion(weights=np.ones(4))
    for k in range(5):
        crit.weights[:] = [1, 2, 3, 4 + k]
        want = nn.ClassNLLCriterion(weights=np.array([1.0, 2, 3, 4 + k])).forward(x, t)
        assert crit.forward(x, t) == pytest.approx(want, rel=1e-12)
    assert len(crit._runtime.cache) == 1  # the programs of earlier weights were dropped


def test_a_child_replaced_by_its_changed_deep_copy_runs_the_copy():
    import copy

    lin = nn.Linear(4, 4)
    m = nn.Sequential(lin, nn.Tanh())
    m.forward(X2)
    m.forward(X2)
    twin = copy.deepcopy(lin)
    twin.weight.data[...] = 0.0
    twin.bias.data[...] = 0.5
    m.add_child("0", twin)
    np.testing.assert_allclose(m.forward(X2), np.tanh(0.5), rtol=1e-12)
    # and a deep copy of a called model runs as its original
    c = copy.deepcopy(m)
    np.testing.assert_array_equal(c.forward(X2), m.forward(X2))


def test_a_replaced_parameter_is_used():
    from tapernn.nn.parameter import Parameter

    lin = nn.Linear(4, 4)
    m = nn.Sequential(lin, nn.Tanh())
    m.forward(X2)
    m.forward(X2)
    lin.weight = Parameter(np.zeros((4, 4)))
    np.testing.assert_allclose(m.forward(X2), np.tanh(lin.bias.data) + 0 * X2, rtol=1e-12)


class _Shift(nn.Module):
    """A custom module with an array constant."""

    def __init__(self):
        super().__init__()
        self.offset = np.zeros(4)

    def build(self, x):
        return x + self.offset


def test_a_custom_modules_array_constant_changed_in_place_or_rebound():
    shift = _Shift()
    m = nn.Sequential(nn.Linear(4, 4), shift)
    y = m.forward(X2).copy()
    m.forward(X2)
    shift.offset[:] = 1.0
    np.testing.assert_allclose(m.forward(X2), y + 1, rtol=1e-12)
    shift.offset = np.full(4, 2.0)
    np.testing.assert_allclose(m.forward(X2), y + 2, rtol=1e-12)
    count = m.trace_count
    for _ in range(3):
        m.forward(X2)
    assert m.trace_count == count


def test_nce_noise_follows_a_unigram_changed_in_place():
    m = nn.NCEModule(3, 4, 4000, np.ones(4), rng=np.random.default_rng(0))
    m.draw_noise()
    m.unigram[:] = [0.0, 0.0, 0.5, 0.5]  # (an NCEModule's unigram: normalised probabilities)
    assert set(np.unique(m.draw_noise())) == {2, 3}


def test_fields_written_by_calls_are_not_settings():
    from tapernn.nn import packing

    # TrimZero writes its `output` array through setattr; NCEModule estimates and sets `z`
    m = nn.TrimZero(nn.Linear(4, 4), 1)
    x = np.vstack([X2, np.zeros((1, 4))])
    m.forward(x)
    version = packing.VERSION[0]
    for _ in range(3):
        m.forward(x)
    assert packing.VERSION[0] == version  # (the steady path and the tree cache stay)
    nce = nn.NCEModule(3, 5, 2, np.ones(5), rng=np.random.default_rng(0))
    ids = np.array([0, 1, 2])
    nce.forward([rng.standard_normal((3, 3)), ids])
    count = nce.trace_count
    for _ in range(3):
        nce.forward([rng.standard_normal((3, 3)), ids])
    assert nce.z > 0 and nce.trace_count == count  # z is an input of every call: no retrace


class _Factors(nn.Module):
    """A custom module with list and dict settings."""

    def __init__(self):
        super().__init__()
        self.factors = [2.0, 3.0]
        self.opts = {"k": 1.0}

    def build(self, x):
        return x * self.factors[0] * self.opts["k"]


def test_a_custom_modules_list_and_dict_settings_rebound_or_changed_in_place():
    # (before: lists and dicts were not settings: the first program ran again, silently)
    m = nn.Sequential(nn.Linear(4, 4), _Factors())
    y = m.forward(X2).copy()
    m.forward(X2)
    f = m.get(1)
    f.factors = [5.0, 1.0]
    np.testing.assert_allclose(m.forward(X2), y * 2.5, rtol=1e-12)
    f.factors[0] = 7.0
    np.testing.assert_allclose(m.forward(X2), y * 3.5, rtol=1e-12)
    f.opts = {"k": 10.0}
    np.testing.assert_allclose(m.forward(X2), y * 35, rtol=1e-12)
    f.opts["k"] = 1.0
    np.testing.assert_allclose(m.forward(X2), y * 3.5, rtol=1e-12)
    count = m.trace_count
    for _ in range(3):
        m.forward(X2)
    assert m.trace_count == count


class _Act(nn.Module):
    """A custom module with a function setting and a class default its instances may shadow."""

    scale = 1.0

    def __init__(self):
        super().__init__()
        self.fn = tn.tanh

    def build(self, x):
        return self.fn(x) * self.scale


@pytest.mark.parametrize("unroll", [None, True])
def test_a_function_setting_or_a_shadowed_class_default_changed_after_a_call(unroll):
    # (before: functions were not settings, and a field new to the instance, shadowing the
    # class's default, bumped nothing: the first program ran again, silently)
    m = nn.Sequencer(nn.Sequential(nn.Linear(4, 4), _Act()), unroll=unroll)
    lin = m.get(0).get(0)
    pre = np.stack([lin.forward(x) for x in X3])
    np.testing.assert_allclose(m.forward(X3), np.tanh(pre), rtol=1e-12)
    m.forward(X3)
    act = m.get(0).get(1)
    act.fn = tn.sigmoid
    np.testing.assert_allclose(m.forward(X3), 1 / (1 + np.exp(-pre)), rtol=1e-12)
    act.scale = 3.0
    np.testing.assert_allclose(m.forward(X3), 3 / (1 + np.exp(-pre)), rtol=1e-12)
    count = m.trace_count
    act.fn = tn.sigmoid  # the same function again: nothing changes
    for _ in range(2):
        m.forward(X3)
    assert m.trace_count == count


def test_sum_size_average_changed_after_a_call():
    # (before: Sum chose its reduction in __init__: a changed size_average kept summing)
    s = nn.Sum(1)
    x = X2
    np.testing.assert_allclose(s.forward(x), x.sum(1), rtol=1e-12)
    s.size_average = True
    np.testing.assert_allclose(s.forward(x), x.mean(1), rtol=1e-12)
    np.testing.assert_allclose(nn.Sum(1, size_average=True).forward(x), x.mean(1), rtol=1e-12)


class _Mode(enum.Enum):
    ONE = 1
    TWO = 2


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.mode = _Mode.ONE

    def build(self, x):
        return x * float(self.mode.value)


def test_an_enum_setting_changed_after_a_call():
    # (before: an enum was not a setting: the first program ran again, silently)
    m = _Scaled()
    m.forward(X2)
    m.forward(X2)
    m.mode = _Mode.TWO
    np.testing.assert_allclose(m.forward(X2), 2 * X2, rtol=1e-12)
