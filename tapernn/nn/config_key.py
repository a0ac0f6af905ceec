"""What a model's programs were traced from besides its inputs: the tree (which module objects,
in which places) and each module's plain settings (`Dropout.p`, `HardTanh.max_value`, a child's
training flag, ...). A program traced before `Sequential.add`, a replaced child or `d.p = 0.2`
would otherwise run again as if nothing changed (a silent wrong answer): `structure_key` is
part of every call's signature, and `Module.__setattr__` calls `setting_changed` so the
steady path and the tree cache look again."""

from __future__ import annotations

import enum
import functools
import itertools
import types
from typing import Any

import numpy as np

_serials = itertools.count()
_SCALARS = (bool, int, float, str, type(None), np.generic, np.dtype, enum.Enum)  # (Copy.out_dtype)
# function fields a build may call (`self.fn = tn.tanh`, Sum's reduce): compared by identity
_FUNCTIONS = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    np.ufunc,
    functools.partial,
)
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


MAX_ITEMS = 64  # longer lists and dicts are not settings


def _plain(value: Any, depth: int = 0) -> bool:
    """A scalar, or (nested) tuples, lists (up to MAX_ITEMS) and str-keyed dicts of scalars."""
    if isinstance(value, _SCALARS):
        return True
    if depth > 3:
        return False
    if isinstance(value, (list, dict)) and len(value) > MAX_ITEMS:
        return False  # (data, e.g. a vocabulary: not compared at every call)
    if isinstance(value, (tuple, list)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def is_setting(name: str, value: Any) -> bool:
    """A public plain value (a scalar; tuples, lists, dicts of scalars) a module's build may
    read."""
    if name.startswith("_") or name in RESULT_FIELDS:
        return False
    return _plain(value)


def is_function_setting(name: str, value: Any) -> bool:
    """A public function field (`self.fn = tn.tanh`), a setting compared by identity (the key
    holds the function itself: its repr holds an address a later function may reuse)."""
    return not name.startswith("_") and name not in RESULT_FIELDS and isinstance(value, _FUNCTIONS)


def changed(old: Any, value: Any) -> bool:
    """Whether setting a field from `old` to `value` changes a setting's value."""
    if isinstance(value, _FUNCTIONS) or isinstance(old, _FUNCTIONS):
        return old is not value and not (type(old) is type(value) and old == value)
    return type(old) is not type(value) or repr(old) != repr(value)


def _entry(value: Any) -> Any:
    return value if isinstance(value, _FUNCTIONS) else repr(value)


def is_mutable_setting(name: str, value: Any) -> bool:
    """A list or dict setting: changed in place, no setter sees it (compared at every call, as
    the array settings)."""
    return isinstance(value, (list, dict)) and is_setting(name, value)


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
    floats; NaN equals itself), function settings by identity."""
    training = modules[0].is_training
    return tuple(
        (
            type(m),
            _serial(m),
            m.is_training is training,
            tuple((k, _param_serial(p)) for k, p in m.__dict__.get("_params", {}).items()),
            tuple(
                sorted(
                    (
                        (k, _entry(v))
                        for k, v in m.__dict__.items()
                        if k != "is_training"
                        and k not in type(m).call_inputs
                        and (is_setting(k, v) or is_function_setting(k, v))
                    ),
                    key=lambda kv: kv[0],
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
        names += [  # a custom module's array constants (`self.offset = np.zeros(4)`) too,
            k  # and its list / dict settings (`self.sizes = [2, 3]`, changed in place)
            for k, v in m.__dict__.items()
            if ((isinstance(v, np.ndarray) and is_array_setting(k)) or is_mutable_setting(k, v))
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
        if isinstance(a, (list, dict)):
            out.append((type(a), repr(a)))
        else:
            out.append(None if a is None else np.array(a, copy=True))
    return out


def same_arrays(pairs: list[tuple[Any, str]], copies: list | None) -> bool:
    """Whether `pairs` hold the values `copies` took, read at every call (an in-place change
    calls no setter): shape, dtype and every element (NaN equal to NaN)."""
    if copies is None or len(copies) != len(pairs):
        return False
    for (m, name), old in zip(pairs, copies):
        a = m.__dict__.get(name)
        if isinstance(old, tuple) or isinstance(a, (list, dict)):  # a list / dict setting
            if not isinstance(old, tuple) or old != (type(a), repr(a)):
                return False
            continue
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


def mixed_dtypes(root: Any, modules: list) -> str:
    """'' when every parameter of `modules` (root's, in `modules()` order) has the root's dtype
    -- the one its data is cast to -- else a message naming the modules that differ. Torch7 and
    PyTorch refuse a float module given double data; here a child converted alone
    (`seq.get(0).float()`) ran in mixed precision, its results in the root's dtype."""
    dtype = root._dtype
    odd = [m for m in modules if any(p.data.dtype != dtype for p in m._params.values())]
    if not odd:
        return ""
    paths: dict[int, str] = {}
    todo = [(root, "")]
    while todo:
        m, path = todo.pop()
        paths.setdefault(id(m), path)
        todo += [(c, f"{path}.{n}" if path else n) for n, c in reversed(list(m.named_children()))]
    named = []
    for m in dict.fromkeys(odd):
        kinds = sorted({p.data.dtype.name for p in m._params.values()})
        named.append(f"{paths.get(id(m)) or 'the model'!r} {m.describe()} ({'/'.join(kinds)})")
    return (
        f"{root.describe()} computes in {dtype.name} (its dtype, the one its data is cast to), "
        f"but these modules hold parameters of another dtype: {'; '.join(named)}. Convert the "
        f"whole model (model.float() / model.double(), or model.astype(dtype)): Torch7 and "
        f"PyTorch refuse mixed precision too"
    )
