"""What a model's programs were traced from besides its inputs: the tree (which module objects,
in which places) and each module's plain settings (`Dropout.p`, `HardTanh.max_value`, a child's
training flag, ...). A program traced before `Sequential.add`, a replaced child or `d.p = 0.2`
would otherwise run again as if nothing changed (a silent wrong answer): `structure_key` is
part of every call's signature, and `Module.__setattr__` calls `setting_changed` so the
steady path and the tree cache look again."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

_serials = itertools.count()
_SCALARS = (bool, int, float, str, type(None), np.generic)
# fields the runtime or a module's own calls write: results, not settings
RESULT_FIELDS = frozenset(
    {
        "output",
        "grad_input",
        "outputs",
        "inputs",
        "cells",
        "states",
        "step",
        "trace_count",
        "reward",  # (ReinforceNormal's: given per call by reinforce(), bound as an input)
    }
)


def is_setting(name: str, value: Any) -> bool:
    """A public plain value (scalar or tuple of scalars) a module's build may read."""
    if name.startswith("_") or name in RESULT_FIELDS:
        return False
    if isinstance(value, tuple):
        return all(isinstance(v, _SCALARS) for v in value)
    return isinstance(value, _SCALARS)


def is_array_setting(name: str) -> bool:
    """A public ndarray field a module's build may read as a constant."""
    return not name.startswith("_") and name not in RESULT_FIELDS


def _serial(m: Any) -> int:
    fields = m.__dict__
    serial = fields.get("_serial")
    if serial is None:  # (a deep copy gets its own: Module.__deepcopy__ leaves it out)
        serial = fields["_serial"] = next(_serials)
    return serial


def _param_serial(p: Any) -> int:
    """A Parameter's own number (a replaced one, `lin.weight = Parameter(...)`, is another;
    an id could be reused once the old one is freed)."""
    serial = p.__dict__.get("_serial")
    if serial is None or serial[0] != id(p):  # (a copy carries its original's number)
        serial = p.__dict__["_serial"] = (id(p), next(_serials))
    return serial[1]


def structure_key(modules: list) -> tuple:
    """One entry per module (in `modules()` order): its type, identity, whether it is in the
    root's mode (the signature holds the root's) and its settings, compared by repr (exact for
    floats; NaN equals itself)."""
    training = modules[0].is_training
    return tuple(
        (
            type(m),
            _serial(m),
            m.is_training is training,
            tuple((k, _param_serial(p)) for k, p in m.__dict__.get("_params", {}).items()),
            tuple(
                sorted(
                    (k, repr(v))
                    for k, v in m.__dict__.items()
                    if k != "is_training" and k not in type(m).call_inputs and is_setting(k, v)
                )
            ),
        )
        for m in modules
    )


def array_settings(modules: list) -> list[tuple[Any, str]]:
    """(module, name) of the arrays modules build constants from (a class's `array_settings`:
    a criterion's `weights`, which may be None; and every public ndarray field), whose values
    every call compares with the last call's (`same_arrays`)."""
    pairs = []
    for m in modules:
        names = list(getattr(type(m), "array_settings", ()))
        names += [  # a custom module's array constants (`self.offset = np.zeros(4)`) too
            k
            for k, v in m.__dict__.items()
            if isinstance(v, np.ndarray)
            and is_array_setting(k)
            and k not in type(m).call_inputs
            and k not in names
        ]
        pairs += [(m, name) for name in names]
    return pairs


def array_copies(pairs: list[tuple[Any, str]]) -> list:
    """Copies of the current values of `pairs` (None where a module holds none)."""
    out = []
    for m, name in pairs:
        a = m.__dict__.get(name)
        out.append(None if a is None else np.array(a, copy=True))
    return out


def same_arrays(pairs: list[tuple[Any, str]], copies: list | None) -> bool:
    """Whether `pairs` hold the values `copies` took, read at every call (an in-place change
    calls no setter): shape, dtype and every element (NaN equal to NaN)."""
    if copies is None or len(copies) != len(pairs):
        return False
    for (m, name), old in zip(pairs, copies):
        a = m.__dict__.get(name)
        if a is None or old is None:
            if a is not old:
                return False
            continue
        a = np.asarray(a)
        if a.shape != old.shape or a.dtype != old.dtype:
            return False
        if not np.array_equal(a, old) and not (  # (NaN only checked when something differs)
            a.dtype.kind in "fc" and np.array_equal(a, old, equal_nan=True)
        ):
            return False
    return True
