"""The op registry: one `OpDef` per op, holding its shape rule, NumPy forward, VJP and flags.

An op is registered once, in its family file (elementwise, reduce, shape, linalg, nn); tracing,
autodiff, the passes and the executor all look ops up here by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import ShapeError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpDef:
    """Everything the system knows about one op.

    forward(*arrays, out=None, **attrs) -> ndarray        (out only if `supports_out`)
    shape(*input_shapes, **attrs) -> Shape               (raises ShapeError)
    dtype(*input_dtypes, **attrs) -> np.dtype            (default: NumPy promotion)
    vjp(g, y, *inputs, wants=(bool, ...), **attrs) -> tuple[Var | None, ...]
        g is the cotangent of the output y; inputs and y are Vars; returns one cotangent (or None)
        per input, computing only those with wants[k] true.
    """

    name: str
    forward: Callable[..., np.ndarray]
    shape: Callable[..., Shape]
    vjp: Callable[..., tuple] | None
    dtype: Callable[..., np.dtype] | None = None
    elementwise: bool = False
    inplace: tuple[int, ...] = ()  # inputs the output may overwrite
    view: bool = False  # output may alias input 0 (reshape, transpose, basic slicing)
    supports_out: bool = True
    variadic: bool = False
    n_inputs: int | None = None
    differentiable: bool = True
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def infer_dtype(self, dtypes: list[np.dtype], attrs: dict) -> np.dtype:
        if self.dtype is not None:
            return np.dtype(self.dtype(*dtypes, **attrs))
        if not dtypes:
            return np.dtype(np.float64)
        key = tuple(dtypes)
        out = _PROMOTED.get(key)
        if out is None:  # result_type is pure, and called for every traced or derived node
            out = _PROMOTED[key] = np.result_type(*dtypes)
        return out


REGISTRY: dict[str, OpDef] = {}
_PROMOTED: dict[tuple, np.dtype] = {}


def register(name: str, **kwargs: Any) -> OpDef:
    if name in REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    op = OpDef(name=name, **kwargs)
    REGISTRY[name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered: {sorted(REGISTRY)}") from None


# ---- shape rules shared by several families -------------------------------------------------


def broadcast_shape(*shapes: Shape, **_: Any) -> Shape:
    if len(shapes) == 2 and shapes[0] == shapes[1]:  # the usual case, without NumPy's help
        return tuple(shapes[0])
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"shapes {', '.join(map(str, shapes))} do not broadcast") from None


def same_shape(x: Shape, **_: Any) -> Shape:
    return tuple(x)


def normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise ShapeError(f"axis {axis} out of range for {ndim}-d input")
    return axis % ndim if ndim else 0


def normalize_axes(axis: int | tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    axes = tuple(sorted({normalize_axis(a, ndim) for a in axis}))
    return axes
