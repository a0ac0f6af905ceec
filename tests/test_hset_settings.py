"""Every checked setting of every module, assigned after construction (hset, nn.settings): a bad
value raises at the assignment the TapernnError the constructor raises for it, with its message,
and leaves the setting as it was; a good value is what a model compiled before the assignment
computes with at its next call (the same outputs as a module given the value before its first
call); a setting the parameters' shapes follow (FIXED) refuses any other value. The table
(tests/hset_cases.py) covers each rule object of every module class
(test_every_rule_is_in_the_table): a new module's rule fails that test until it has a case."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hset_cases import CASES, FIXED, Case, Same, value

import tapernn as tn
from tapernn import nn
from tapernn.errors import ArgumentError as AE
from tapernn.nn.module import Module


def _public_classes() -> list[type]:
    return [c for c in vars(nn).values() if isinstance(c, type) and issubclass(c, Module)]


def test_every_rule_is_in_the_table():
    """Each rule object of a public module class (a subclass shares its base's) has a case."""
    covered = {id(type(c.make()).setting_rules[c.setting]) for c in CASES.values()}
    missing = sorted(
        f"{cls.__name__}.{name}"
        for cls in _public_classes()
        for name, rule in cls.setting_rules.items()
        if id(rule) not in covered
    )
    assert not missing, f"settings without a case in CASES: {missing}"


def made(case: Case) -> Module:
    """The case's module, its parameters drawn from one seed (the oracle's are the same)."""
    tn.manual_seed(0)
    return case.make()


def _ctor_error(case: Case, bad: Any, cls: type) -> str | None:
    if not case.ctor:
        return None
    with pytest.raises(cls) as err:
        case.make(bad)
    return str(err.value)


@pytest.mark.parametrize(
    "key, k", [(key, k) for key, case in CASES.items() for k in range(len(case.bad))]
)
def test_a_bad_assignment_raises_what_the_constructor_raises(key, k):
    case = CASES[key]
    bad, cls = case.bad[k]
    expected = _ctor_error(case, bad, cls)
    m = case.make()
    model = case.wrap(m)
    case.run(model)  # (compiled: the assignment is refused all the same)
    before = m.__dict__.get(case.setting, AE)  # (AE: not set, a class default: unroll)
    with pytest.raises(cls) as err:
        setattr(m, case.setting, bad)
    message = str(err.value)
    assert message.startswith(f"nn.{type(m).__name__}: ") and case.setting in message
    if expected is not None:
        assert message == expected.replace(case.arg or case.setting, case.setting)
    assert m.__dict__.get(case.setting, AE) is before  # (left as it was)


def _outputs(out: Any) -> list[np.ndarray]:
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in _outputs(o)]
    return [np.array(out, dtype=float)]


def _same(a: Any, b: Any) -> bool:
    a, b = _outputs(a), _outputs(b)
    return len(a) == len(b) and all(
        x.shape == y.shape and np.allclose(x, y, rtol=1e-12, atol=1e-12) for x, y in zip(a, b)
    )


def _fixed(good: Any) -> bool:
    return isinstance(good, str) and good == FIXED


GOOD = [
    key for key, case in CASES.items() if not _fixed(case.good) and not isinstance(case.good, Same)
]


@pytest.mark.parametrize("key", GOOD)
def test_a_good_assignment_changes_what_a_compiled_model_computes(key):
    case = CASES[key]
    m = made(case)
    model = case.wrap(m)
    before = case.run(model)
    case.run(model)  # (the steady path: nothing traced again unless a setting changed)
    setattr(m, case.setting, value(case.good))
    after = case.run(model)
    fresh = made(case)
    setattr(fresh, case.setting, value(case.good))  # (set before the first call: the oracle)
    want = case.run(case.wrap(fresh))
    assert _same(after, want), f"{key}: the compiled model did not use the new value"
    assert not _same(before, after), f"{key}: the good value does not change the output"


@pytest.mark.parametrize("key", [key for key, case in CASES.items() if isinstance(case.good, Same)])
def test_a_good_assignment_is_stored(key):
    """Settings computing the same by design (unroll, rho, ...): stored, and the compiled model
    computes what it did."""
    case = CASES[key]
    m = made(case)
    model = case.wrap(m)
    before = case.run(model)
    setattr(m, case.setting, case.good.value)
    assert m.__dict__[case.setting] == case.good.value
    after = case.run(model)
    if case.good.computes_the_same:
        assert _same(after, before)


@pytest.mark.parametrize("key", [key for key, case in CASES.items() if _fixed(case.good)])
def test_a_fixed_setting_takes_only_its_own_value(key):
    case = CASES[key]
    m = case.make()
    model = case.wrap(m)
    before = case.run(model)
    own = m.__dict__[case.setting]
    setattr(m, case.setting, own)  # the same value: accepted
    assert _same(case.run(model), before)
    other = {bool: lambda v: not v, int: lambda v: v + 1, tuple: lambda v: v + v[:1]}[type(own)]
    with pytest.raises(AE, match=f"{case.setting} is .*, fixed at construction"):
        setattr(m, case.setting, other(own))
    assert m.__dict__[case.setting] == own
