"""Settings' rules: how a module checks its plain settings (`Dropout.p`, `HardTanh.min_value`, a
criterion's `size_average`, a Sequencer's `unroll`, ...). A class declares them once,
`setting_rules = {"p": number("[0, 1)"), "rng": check.generator}`, and `Module.__setattr__` runs
the rule at every assignment: the constructor's `self.p = p` and a later `d.p = nan` alike. A
value set after construction was otherwise never checked: `d.p = nan` gave NaN outputs silently,
`d.p = -0.5` rescaled them, `HardTanh.min_value = 2` past max_value clamped to nonsense.

A rule is `rule(module, name, value) -> value`: the value normalised (numpy integers -> int,
numbers -> float) or a TapernnError naming the module, the setting, what is expected and what was
given (the `validation` checks' messages). Names a class does not declare cost one dict lookup
(`output`, `grad_input` and the per-call fields are written into `__dict__`, not through here)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any

import numpy as np

from .. import validation as check
from ..errors import ArgumentError, ArgumentTypeError, DTypeError

Rule = Callable[[Any, str, Any], Any]


def rules_of(cls: type) -> MappingProxyType:
    """`cls`'s rules: its bases' (in method resolution order), its own `setting_rules` last (a
    subclass's rule for a name replaces its base's: TrimZero's n_input_dim)."""
    merged: dict[str, Rule] = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get("setting_rules", {}))
    return MappingProxyType(merged)


def number(interval: str | None = None) -> Rule:
    """A finite real number in `interval` (validation.number's: None, "positive", ...)."""
    return lambda owner, name, value: check.number(owner, name, value, interval)


def size(allow_none: bool = False, minimum: int = 1) -> Rule:
    """A positive integer (`minimum=0`: non-negative), or None if `allow_none`."""
    return lambda owner, name, value: check.size(owner, name, value, allow_none, minimum)


def sequence(owner: Any, name: str, value: Any, what: str) -> tuple:
    """`value` as a tuple if it is a tuple or list (of `what`, checked by the caller)."""
    if not isinstance(value, (tuple, list)):
        raise ArgumentTypeError(
            f"{check.who(owner)}: {name} must be a tuple of {what}, got {check.got(value)}"
        )
    return tuple(value)


def sizes(owner: Any, name: str, value: Any) -> tuple[int, ...]:
    """A tuple of positive integers (Reshape's shape)."""
    return check.sizes(owner, name, sequence(owner, name, value, "positive integers"))


def choice(options: Iterable[str]) -> Rule:
    options = tuple(options)
    return lambda owner, name, value: check.choice(owner, name, value, options)


def optional(rule: Rule) -> Rule:
    """None (the module's default: e.g. `unroll`, decided per call) or what `rule` accepts."""
    return lambda owner, name, value: None if value is None else rule(owner, name, value)


def nonzero_integer(owner: Any, name: str, value: Any) -> int:
    """A non-zero integer, negative counting from the end (Narrow's length, Padding's pad)."""
    value = check.integer(owner, name, value)
    if value == 0:
        raise ArgumentError(
            f"{check.who(owner)}: {name} must be a non-zero integer (negative: counted from "
            f"the end), got 0"
        )
    return value


def fixed(rule: Rule) -> Rule:
    """What `rule` accepts, once: a setting the parameters' shapes follow (Linear's input_size,
    LSTM's peephole). Changed later it would describe parameters the module does not hold (a
    shape error deep inside, or peepholes silently left out): refused, naming what to do."""

    def checked(owner: Any, name: str, value: Any) -> Any:
        value = rule(owner, name, value)
        fields = owner.__dict__
        if name in fields and value != fields[name]:
            raise ArgumentError(
                f"{check.who(owner)}: {name} is {fields[name]!r}, fixed at construction (its "
                f"parameters or states were made for it), got {value!r}; make a new "
                f"{check.who(owner)} for another {name}"
            )
        return value

    return checked


def ordered(low: str, high: str) -> Rule:
    """A finite number, `low` < `high` once both are set (HardTanh's and Clamp's bounds: with
    min_value >= max_value every output was clamped to one bound or the other, gradient 0)."""

    def checked(owner: Any, name: str, value: Any) -> float:
        value = check.number(owner, name, value)
        other = high if name == low else low
        if other in owner.__dict__:
            lo, hi = (value, owner.__dict__[high]) if name == low else (owner.__dict__[low], value)
            if not lo < hi:
                raise ArgumentError(
                    f"{check.who(owner)}: {low} {lo} must be < {high} {hi} (to move both "
                    f"bounds past each other, set the leading one first)"
                )
        return value

    return checked


def rules(**named: Rule) -> MappingProxyType:
    """A class's `setting_rules`, read-only: `setting_rules = rules(p=number("[0, 1)"))`."""
    return MappingProxyType(named)


def float_dtype(owner: Any, name: str, value: Any) -> np.dtype:
    """A float dtype (np.float32, "float64", ...: Copy's `out_dtype`)."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind != "f":
        raise DTypeError(
            f"{check.who(owner)}: {name} must be a float dtype, got {check.got(value)}"
        )
    return dtype


def weight_shape(owner: Any, name: str, value: Any) -> tuple[int, ...]:
    """A parameter's shape: positive sizes, at least one (CMul's `size`)."""
    shape = sizes(owner, name, value)
    if not shape:
        raise ArgumentError(f"{check.who(owner)}: {name}: give the weight's shape, e.g. CMul(4)")
    return shape


def view_shape(owner: Any, name: str, value: Any) -> tuple[int, ...]:
    """A view's shape: positive integers but at most one -1, the size the rest leaves (View)."""
    value = sequence(owner, name, value, "sizes")
    shape = tuple(check.integer(owner, f"{name}[{k}]", s) for k, s in enumerate(value))
    if not shape or shape.count(-1) > 1 or any(s < 1 and s != -1 for s in shape):
        raise ArgumentError(
            f"{check.who(owner)}: sizes must be positive with at most one -1, got {shape}"
        )
    return shape


def dim_pairs(owner: Any, name: str, value: Any) -> tuple[tuple[int, int], ...]:
    """Pairs of dims (a, b) (Transpose's `permutations`)."""
    for pair in sequence(owner, name, value, "pairs of dims"):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ArgumentTypeError(
                f"{check.who(owner)}: {name}: each must be a pair of dims (a, b), got "
                f"{check.got(pair)}"
            )
    return tuple(
        (check.integer(owner, f"{name}[{k}][0]", a), check.integer(owner, f"{name}[{k}][1]", b))
        for k, (a, b) in enumerate(value)
    )
