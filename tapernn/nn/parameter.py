"""`Parameter`: a module's trainable array and its gradient (`data`, `grad`), usable inside a
build as its Var (operators and NumPy calls record ops); rows of a packed block (nn.packing)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .. import aligned
from .. import random as tn_random
from ..errors import ArgumentError, ArgumentTypeError, DTypeError, ShapeError
from ..tracing import Var
from .context import current_build
from .packing import changed as packing_changed


class _BlockRows:
    """`Parameter.data` / `.grad`: rebinding one to another array takes the parameter out of its
    block (nn.packing), which then stops being used; assigning it the same array does not."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, p: Any, owner: type | None = None) -> Any:
        return self if p is None else p.__dict__[self.slot]

    def __set__(self, p: Any, value: np.ndarray) -> None:
        self.rebind(p, value, retype=False)

    def rebind(self, p: Any, value: np.ndarray, retype: bool) -> None:
        """`p.data = value`; `retype`: value may change the dtype (Parameter.retype only)."""
        old = p.__dict__.get(self.slot)
        if old is not None:
            _check_rebind(p, self.slot[1:], old, value, retype)
        block = p._block
        if block is not None and value is not p.__dict__[self.slot]:
            block.intact = False
            p._block = None
        if value is not old:
            packing_changed()  # modules' cached parameter storage is stale
        p.__dict__[self.slot] = value


def _check_rebind(p: Any, field: str, old: np.ndarray, value: Any, retype: bool) -> None:
    """`p.data = value` (or `.grad`) keeps a float array of the parameter's shape and dtype:
    another dtype would run the model in mixed precision, silently (a float32 weight in a float64
    model rounds every output to float32's precision). Module.astype changes both together."""
    if not isinstance(value, np.ndarray):
        raise ArgumentTypeError(
            f"parameter {p.name!r}: .{field} must be a numpy array, got {type(value).__name__}"
        )
    if value.shape != old.shape:
        raise ShapeError(
            f"parameter {p.name!r} has shape {old.shape}; cannot rebind its .{field} "
            f"to shape {value.shape} (assign into it, p.{field}[...] = ..., or "
            f"build a new module)"
        )
    if value.dtype.kind != "f":
        raise DTypeError(f"parameter {p.name!r}: .{field} must be a float array, got {value.dtype}")
    if field == "grad" and not value.flags.writeable:  # (a read-only .data may serve inference)
        raise ArgumentError(
            f"parameter {p.name!r}: .grad must be a writeable array (backward accumulates into "
            f"it), got a read-only one"
        )
    if value.dtype != old.dtype and not retype:
        swapped = " byte-swapped" * (not value.dtype.isnative)  # (its name says float64 too)
        raise DTypeError(
            f"parameter {p.name!r} is {old.dtype.name}; cannot rebind its .{field} to a"
            f"{swapped} {value.dtype.name} array (pass value.astype(np.{old.dtype.name}), assign "
            f"into it with p.{field}[...] = value, or convert the whole module with .float() / "
            f".double())"
        )


class Parameter:
    """A trainable array: `.data`, `.grad` (same shape, accumulated by backward), `.name`.

    Inside a module's symbolic build a Parameter behaves like the `tn.Var` bound to it.
    """

    _block = None  # the packing.Block holding .data/.grad as rows of one array, if any
    _home = None  # the module whose `parameter()` created it: only it may block it
    data = _BlockRows()
    grad = _BlockRows()

    def __init__(self, data: np.ndarray, name: str = ""):
        self.data = np.asarray(data)
        self.grad = aligned.zeros_like(self.data)  # (packing.Block's note)
        self.name = name

    def __deepcopy__(self, memo: dict) -> Parameter:
        """Its own fields first, its home module last: a copy reached before its module (through
        a field holding parameters) is complete when the module's copy packs it (Module.
        __deepcopy__); before, that raised KeyError '_data'."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        fields = self.__dict__
        for key in sorted(fields, key=lambda k: k == "_home"):
            new.__dict__[key] = copy.deepcopy(fields[key], memo)
        return new

    def retype(self, dtype: np.dtype) -> None:
        """Convert `.data` and `.grad` to `dtype` together (Module.astype; a no-op when equal)."""
        type(self).data.rebind(self, self.data.astype(dtype, copy=False), retype=True)
        type(self).grad.rebind(self, aligned.astype(self.grad, dtype), retype=True)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __tapernn_var__(self) -> Var:
        return current_build(self).bind(self)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"

    # operators make `x @ self.w + self.b` read naturally inside build/step
    __add__ = lambda s, o: s.__tapernn_var__() + o
    __radd__ = lambda s, o: o + s.__tapernn_var__()
    __sub__ = lambda s, o: s.__tapernn_var__() - o
    __rsub__ = lambda s, o: o - s.__tapernn_var__()
    __mul__ = lambda s, o: s.__tapernn_var__() * o
    __rmul__ = lambda s, o: o * s.__tapernn_var__()
    __truediv__ = lambda s, o: s.__tapernn_var__() / o
    __matmul__ = lambda s, o: s.__tapernn_var__() @ o
    __rmatmul__ = lambda s, o: o @ s.__tapernn_var__()
    __neg__ = lambda s: -s.__tapernn_var__()
    __getitem__ = lambda s, i: s.__tapernn_var__()[i]
    T = property(lambda s: s.__tapernn_var__().T)

    # NumPy on a Parameter inside a build: as on its Var (operators record, np.tanh says tn.tanh)
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        inputs = tuple(i.__tapernn_var__() if isinstance(i, Parameter) else i for i in inputs)
        var = next(i for i in inputs if isinstance(i, Var))
        return var.__array_ufunc__(ufunc, method, *inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return self.__tapernn_var__().__array_function__(func, types, args, kwargs)


def uniform(shape: tuple[int, ...], bound: float, rng: np.random.Generator | None) -> np.ndarray:
    return tn_random.generator(rng).uniform(-bound, bound, size=shape)


def reinitialise(p: Parameter, stdv: float | None) -> None:
    """`p` drawn again as `Module.parameter` built it (its init), or, given `stdv`, as Torch7's
    `reset(stdv)`: U(+-stdv), a normal init (LookupTable) N(0, stdv); drawn from the generator
    it was built with (`rng=`; else the global one)."""
    init, bound = getattr(p, "_init", ("uniform", None))
    rng = getattr(p, "_rng", None)  # (before hqa21: the global generator, always)
    if init == "normal":
        scale = 1.0 if stdv is None else stdv
        p.data[...] = scale * tn_random.generator(rng).standard_normal(p.shape)
    elif stdv is not None:
        p.data[...] = uniform(p.shape, stdv, rng)
    elif init == "uniform":
        p.data[...] = uniform(
            p.shape, bound if bound is not None else 1 / np.sqrt(p.shape[-1]), rng
        )
    else:  # (before hqa20, "zeros" / "ones" / an array kept the trained values)
        fill = {"zeros": 0, "ones": 1}.get(init, getattr(p, "_init_array", None))
        if fill is not None:  # (an array init not kept: the values stay, never zeros)
            p.data[...] = fill
