"""Argument checks shared by every public constructor and function (sizes, indices, flags,
numbers, choices, modules, generators, parameter lists, input arrays): each failure is an
ArgumentError / ArgumentTypeError / DTypeError naming the call, the argument, what is expected
and what was got. Valid values come back normalised (numpy integers -> int, numbers -> float)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import ArgumentError, ArgumentTypeError, DTypeError, NumericError

_INTERVALS = {  # name -> (description for type errors, test, description for range errors)
    None: ("number", lambda v: True, "a finite number"),
    "positive": ("positive number", lambda v: v > 0, "a positive number"),
    "non-negative": ("non-negative number", lambda v: v >= 0, "a non-negative number"),
    "[0, 1)": ("number in [0, 1)", lambda v: 0 <= v < 1, "in [0, 1)"),
}


def who(owner: Any) -> str:
    """How a message names the call: a string as given, a tapernn object as `nn.Linear`."""
    if isinstance(owner, str):
        return owner
    cls = owner if isinstance(owner, type) else type(owner)
    return f"nn.{cls.__name__}" if cls.__module__.startswith("tapernn.nn") else cls.__name__


def got(value: Any) -> str:
    """`value` for a message: a module's description, or a short repr and the type."""
    if isinstance(value, type):
        return f"the class {value.__name__} (an instance is needed: {value.__name__}(...))"
    if getattr(value, "_params", None) is not None and callable(getattr(value, "describe", None)):
        return value.describe()  # a module (built far enough to describe itself)
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text if value is None else f"{text} ({type(value).__name__})"


def _number_text(value: Any) -> str:
    return repr(int(value)) if is_integer(value) else repr(float(value))


def is_integer(value: Any) -> bool:
    """A Python or NumPy integer, not a bool (True is not a size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A Python or NumPy int/float, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def size(
    owner: Any, name: str, value: Any, allow_none: bool = False, minimum: int = 1
) -> int | None:
    """A positive integer (numpy integers accepted, bools refused), or None if `allow_none`;
    `minimum=0` also accepts 0 (a non-negative integer)."""
    if value is None and allow_none:
        return None
    kind = "positive" if minimum == 1 else "non-negative"
    expected = f"{name} must be a {kind} integer{' or None' if allow_none else ''}"
    if not is_integer(value):
        raise ArgumentTypeError(f"{who(owner)}: {expected}, got {got(value)}")
    if value < minimum:
        raise ArgumentError(f"{who(owner)}: {expected}, got {int(value)}")
    return int(value)


def sizes(owner: Any, name: str, values: Iterable[Any]) -> tuple[int, ...]:
    return tuple(size(owner, f"{name}[{k}]", v) for k, v in enumerate(values))


def integer(owner: Any, name: str, value: Any) -> int:
    """Any integer (a dimension or an index; negative counts from the end)."""
    if not is_integer(value):
        raise ArgumentTypeError(f"{who(owner)}: {name} must be an integer, got {got(value)}")
    return int(value)


def flag(owner: Any, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{who(owner)}: {name} must be True or False, got {got(value)}")
    return bool(value)


def number(owner: Any, name: str, value: Any, interval: str | None = None) -> float:
    """A finite real number in `interval`: None (any), "positive", "non-negative", "[0, 1)"."""
    kind, inside, described = _INTERVALS[interval]
    if not is_real(value):
        raise ArgumentTypeError(f"{who(owner)}: {name} must be a {kind}, got {got(value)}")
    if not math.isfinite(float(value)) or not inside(value):
        raise ArgumentError(f"{who(owner)}: {name} must be {described}, got {_number_text(value)}")
    return float(value)


def choice(owner: Any, name: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    if isinstance(value, str) and value in options:
        return value
    cls = ArgumentError if isinstance(value, str) else ArgumentTypeError
    listed = ", ".join(repr(o) for o in options)
    raise cls(f"{who(owner)}: {name} must be one of {listed}, got {got(value)}")


# the module classes `module` and `parameters` check for: registered by tapernn.nn (a layer
# above this one) when it is imported -- "Module", "Parameter", "Criterion"
NN_CLASSES: dict[str, type] = {}


def module(owner: Any, name: str, value: Any, criterion: bool = False) -> Any:
    """An nn.Module instance (an nn.Criterion if `criterion`)."""
    what = "nn.Criterion" if criterion else "nn.Module"
    cls = NN_CLASSES[what[3:]]
    if not isinstance(value, cls):
        raise ArgumentTypeError(f"{who(owner)}: {name} must be an {what}, got {got(value)}")
    return value


def not_holding(owner: Any, child: Any) -> Any:
    """`child`, refused if it is `owner` or holds it: a module tree has no cycles (walking it,
    printing it or calling it would recurse without end)."""
    if any(m is owner for m in child.modules()):
        how = "itself" if child is owner else f"{child.describe()}, which holds it"
        raise ArgumentError(
            f"{who(owner)}: cannot hold {how} (a module tree has no cycles; a reference that "
            f"is not a child goes in an attribute whose name starts with '_')"
        )
    return child


def generator(owner: Any, name: str, value: Any) -> np.random.Generator | None:
    if value is not None and not isinstance(value, np.random.Generator):
        raise ArgumentTypeError(
            f"{who(owner)}: {name} must be a numpy.random.Generator or None, "
            f"got {got(value)}; make one with np.random.default_rng(seed)"
        )
    return value


def seed(value: Any) -> int:
    if not is_integer(value):
        raise ArgumentTypeError(
            f"tn.manual_seed: seed must be a non-negative integer, got {got(value)}"
        )
    if value < 0:
        raise ArgumentError(
            f"tn.manual_seed: seed must be a non-negative integer, got {int(value)}"
        )
    return int(value)


def parameters(owner: Any, params: Any) -> list:
    """A non-empty list of Parameters (what `module.parameters()` returns)."""
    Module, Parameter = NN_CLASSES["Module"], NN_CLASSES["Parameter"]
    if isinstance(params, Module):
        raise ArgumentTypeError(
            f"{who(owner)}: params must be a list of Parameters, got the "
            f"module {got(params)}; pass module.parameters()"
        )
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise ArgumentTypeError(
            f"{who(owner)}: params must be a list of Parameters "
            f"(module.parameters()), got {got(params)}"
        )
    params = list(params)
    for k, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise ArgumentTypeError(
                f"{who(owner)}: params[{k}] must be a Parameter (from "
                f"module.parameters()), got {got(p)}"
            )
    if not params:
        raise ArgumentError(f"{who(owner)}: got no parameters to optimise")
    seen: dict[int, int] = {}
    for k, p in enumerate(params):
        first = seen.setdefault(id(p), k)
        if first != k:  # (it would be updated, or its gradient scaled, once per listing)
            raise ArgumentError(
                f"{who(owner)}: params[{k}] ({p.name!r}) is params[{first}] again; pass each "
                f"parameter once (list(dict.fromkeys(params)) drops repeats, e.g. of weights two "
                f"modules share)"
            )
    return params


def class_ids(owner: Any, name: str, t: np.ndarray) -> np.ndarray:
    """`t` if it holds integer class ids; a float or bool array is a DTypeError (the criteria's
    targets: ClassNLLCriterion, VRClassReward)."""
    if t.dtype.kind not in "iu":
        raise DTypeError(
            f"{who(owner)}: {name} must be integer class ids (0-based), got {t.dtype}; "
            f"pass {name}.astype(int)"
        )
    return t


def weights(owner: Any, name: str, value: Any) -> np.ndarray | None:
    """None, or a 1-D array of numbers (per-class weights), as float64."""
    if value is None:
        return None
    arr = np.asarray(value)
    expected = f"{name} must be None or a 1-D array of numbers"
    if arr.dtype.kind not in "iuf":
        raise ArgumentTypeError(f"{who(owner)}: {expected}, got {got(value)}")
    if arr.ndim != 1:
        raise ArgumentError(f"{who(owner)}: {expected}, got shape {arr.shape}")
    return arr.astype(np.float64)


def data_array(owner: Any, x: np.ndarray) -> np.ndarray:
    """`x` if its dtype is one the library computes with (float, int, uint, bool)."""
    kind = x.dtype.kind
    if kind in "fiub":
        return x
    if kind == "c":
        raise DTypeError(
            f"{who(owner)}: complex inputs are not supported (got {x.dtype.name}); "
            f"pass real arrays (e.g. the real and imaginary parts separately)"
        )
    shown = x.dtype.str if kind in "USV" else x.dtype.name
    if kind == "O":  # (a None where an array goes, or lists numpy could not make one array of)
        shown = type(x.item()).__name__ if x.ndim == 0 else "object (ragged or mixed lists)"
    raise DTypeError(f"{who(owner)}: expected a numeric array (float, int or bool), got {shown}")


def narrowed(owner: Any, what: str, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`x` cast to the model's `dtype`; a finite value the cast would turn into Inf (float64 data
    beyond float32's range into a float32 model) is a NumericError, not a silent Inf (and a
    NumPy overflow warning). NaN / Inf already in `x` pass, as at the model's own dtype."""
    x = data_array(owner, np.asarray(x))
    with np.errstate(over="raise"):
        try:
            return x.astype(dtype)
        except FloatingPointError:
            finite = np.abs(x[np.isfinite(x)])
            raise NumericError(
                f"{who(owner)}: {what}: values beyond {np.dtype(dtype).name}'s range "
                f"(largest magnitude {finite.max():.6g}); the model is {np.dtype(dtype).name}: "
                f"scale the data or convert the model (model.double())"
            ) from None


def dtype_change(leaves: list, old: np.dtype, new: np.dtype) -> str:
    """The "float32 -> float64" of a recurrent state's DTypeError, with why when NumPy's promotion
    did it: an integer step input (its `leaves`), else an integer array constant in the step
    (Python and float constants take the model's dtype; integer arrays keep theirs)."""
    ints = [v.dtype for v in leaves if getattr(v, "dtype", np.dtype(object)).kind in "iu"]
    if new != np.result_type(old, new) or new.kind != "f":
        return f"{old} -> {new}"
    if ints and np.result_type(ints[0], old) != old:
        return (
            f"{old} -> {new} (the step input holds {ints[0]} integers, which NumPy promotes with "
            f"{old}: pass the input as .astype(np.{old}))"
        )
    return (
        f"{old} -> {new} (an integer array in the step, such as np.arange(4) or np.array(2), "
        f"promotes {old} to {new} as in NumPy; Python numbers and float arrays take the model's "
        f"dtype: write it as a float array, np.arange(4.0))"
    )


_TN_SPELLING = {
    "absolute": "abs",
    "concatenate": "concat",
    "amax": "max",
    "amin": "min",
    "negative": "-x",
    "expand_dims": "reshape",
    "squeeze": "reshape",
    "swapaxes": "transpose",
}


def part_name(owner: Any, kind: str, name: Any) -> None:
    """A parameter's or child's name is one component of the dotted state_dict keys: a name
    with a "." could equal another's key ("a.bias" beside child a's bias: one of them would be
    lost by tn.save), an empty one names nothing (PyTorch's register_parameter rule)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ArgumentError(
            f"{who(owner)}: {kind} name must be a non-empty string without '.' "
            f"(state_dict keys join names with '.'), got {name!r}"
        )


def free_name(owner: Any, name: Any) -> None:
    """A new parameter's name: a part_name, not registered already (a second one would
    silently replace the first), and, as it becomes the attribute `name`, not hiding one of the
    module's own fields, children or its class's methods and settings (a parameter 'step')."""
    part_name(owner, "parameter", name)
    if name in owner._params:
        raise ArgumentError(f"{who(owner)}: parameter {name!r} is already {ONCE}")
    if name in owner.__dict__ or name in owner._children or hasattr(type(owner), name):
        raise ArgumentError(
            f"{who(owner)}: parameter name {name!r} is taken by an attribute of "
            f"{type(owner).__name__}; choose another name"
        )


# a parameter registered twice (e.g. by a cell's step: it runs every step)
ONCE = "registered (register each parameter once, in __init__: step and build run every step)"
_SYMBOLIC = ("tapernn.functional", "tapernn.library")  # modules of the tn.* symbolic functions


def numpy_on_var(called: str, name: str, where_: str) -> str:
    """The error for NumPy function `called` (`name`) applied to a symbolic Var: which tn.* op to
    use instead."""
    return f"np.{called} cannot take a symbolic tn.Var{where_}; {tn_instead(name)}"


def tn_instead(name: str) -> str:
    """Which tn.* op does what NumPy's `name` does, for a message about a symbolic Var."""
    public = sys.modules.get("tapernn")  # the package exposing the tn.* names (loaded by now)
    tn_name = _TN_SPELLING.get(name, name)
    if tn_name == "-x":
        return "use -x"
    if getattr(getattr(public, tn_name, None), "__module__", "") in _SYMBOLIC:
        return f"use tn.{tn_name}"
    return (
        "tapernn has no symbolic version: build it from the tn.* ops (tn.exp, tn.log, "
        "tn.tanh, tn.sigmoid, tn.sum, ...)"
    )
