"""The symbolic functions users call (`tn.tanh`, `tn.concat`, ...): thin wrappers that normalise
arguments and record ops. VJP rules are written with these too, so gradients are graphs as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ArgumentTypeError, DTypeError, ShapeError, TracingError, VarAttributeError
from .errors import where as located
from .ops.registry import normalize_axes, normalize_axis
from .tracing import Var, as_var, current_scope, current_step, emit
from .validation import numpy_on_var, tn_instead


def _unary(name):
    return lambda x: emit(name, x)


def _binary(name):
    return lambda a, b: emit(name, a, b)


add, sub, mul, div = _binary("add"), _binary("sub"), _binary("mul"), _binary("div")
maximum, minimum = _binary("maximum"), _binary("minimum")
greater, equal = _binary("greater"), _binary("equal")
neg, exp, log, tanh = _unary("neg"), _unary("exp"), _unary("log"), _unary("tanh")
sigmoid, relu, sqrt, abs = _unary("sigmoid"), _unary("relu"), _unary("sqrt"), _unary("abs")
sign = _unary("sign")


def power(a: Any, b: Any) -> Var:
    """`a ** b`. An integer to a negative integer power has no integer result: NumPy refuses it
    only when the program runs ("Integers to negative integer powers are not allowed"), so a
    constant negative exponent of an integer power is refused here, when traced (an exponent
    computed at run time can only fail then)."""
    out = emit("power", a, b)
    exponent = out.node.inputs[1]
    if out.dtype.kind in "iu" and exponent.op == "constant" and (exponent.value < 0).any():
        raise DTypeError(
            f"power: an integer to a negative integer power (exponent {exponent.value.min()}) "
            f"has no integer result (got {out.node.inputs[0].dtype} ** {exponent.dtype}); "
            f"convert to floats first: x.astype(np.float64) for an input array, "
            f"tn.cast(v, np.float64) for a traced value, or write a float exponent (x ** -1.0)"
            f"{located(current_scope() or None, current_step())}"
        )
    return out


def where(cond: Any, x: Any, y: Any) -> Var:
    """Elementwise `x if cond else y` (NumPy broadcasting)."""
    return emit("where", cond, x, y)


def cast(x: Var, dtype: Any) -> Var:
    dtype = np.dtype(dtype)
    return x if x.dtype == dtype else emit("cast", x, dtype=dtype.str)


def stop_gradient(x: Var) -> Var:
    """Identity whose gradient is zero."""
    return emit("stop_gradient", x)


def add_loss(x: Var, loss: Var) -> Var:
    """`x` unchanged, with the scalar `loss` added to the objective being differentiated:
    backward adds d loss/d(whatever it depends on), whatever gradient x itself receives
    (a regulariser's penalty, e.g. NormStabilizer's)."""
    return emit("add_loss", x, loss)


def zeros(shape: Sequence[int], dtype: Any = np.float64) -> Var:
    return emit("zeros", shape=tuple(int(s) for s in shape), dtype=np.dtype(dtype).str)


def ones(shape: Sequence[int], dtype: Any = np.float64) -> Var:
    return emit("ones", shape=tuple(int(s) for s in shape), dtype=np.dtype(dtype).str)


def zeros_like(x: Var) -> Var:
    return (
        emit("zeros", shape=x.shape, dtype=x.dtype.str) if isinstance(x, Var) else np.zeros_like(x)
    )


def ones_like(x: Var) -> Var:
    return emit("ones", shape=x.shape, dtype=x.dtype.str) if isinstance(x, Var) else np.ones_like(x)


def add_n(xs: Sequence[Var]) -> Var:
    """Sum of same-shaped values in one op (how autodiff accumulates cotangents)."""
    xs = list(xs)
    return xs[0] if len(xs) == 1 else emit("add_n", *xs)


# ---- reductions --------------------------------------------------------------------------------


def sum(x: Var, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Var:
    x = as_var(x)
    axes = normalize_axes(axis, x.ndim)
    if not axes and not keepdims:
        return x
    return emit("sum", x, axis=axes, keepdims=bool(keepdims))


def max(x: Var, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Var:
    x = as_var(x)
    return emit("max", x, axis=normalize_axes(axis, x.ndim), keepdims=bool(keepdims))


def min(x: Var, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Var:
    """The smallest entry (over `axis`): -max(-x), exact for floats (negation is), the
    gradient max's. Integers are refused: their negation wraps (-max(-x) of uint8 [0, 5] is 5)."""
    x = as_var(x)
    if x.dtype.kind != "f":
        raise DTypeError(
            f"tn.min takes floating-point values, got {x.dtype} (it is -max(-x), and negation "
            f"wraps around in integers); convert first: x.astype(np.float64) for an input "
            f"array, tn.cast(v, np.float64) for a traced value{_where()}"
        )
    return -max(-x, axis, keepdims)


def logsumexp(x: Var, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Var:
    x = as_var(x)
    return emit("logsumexp", x, axis=normalize_axes(axis, x.ndim), keepdims=bool(keepdims))


def softmax(x: Var, axis: int = -1) -> Var:
    return emit("softmax", x, axis=normalize_axis(axis, x.ndim))


def log_softmax(x: Var, axis: int = -1) -> Var:
    return emit("log_softmax", x, axis=normalize_axis(axis, x.ndim))


def broadcast_to(x: Var, shape: Sequence[int]) -> Var:
    shape = tuple(int(s) for s in shape)
    return x if x.shape == shape else emit("broadcast_to", x, shape=shape)


def unbroadcast(g: Var, shape: Sequence[int]) -> Var:
    """Sum `g` down to `shape`: the one place that undoes NumPy broadcasting in VJPs."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + k for k, s in enumerate(shape) if s == 1 and g.shape[lead + k] != 1
    )
    return reshape(sum(g, axes), shape)


# ---- shape ops ---------------------------------------------------------------------------------


def reshape(x: Var, shape: Sequence[int] | int) -> Var:
    x = as_var(x)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: at most one -1 in {shape}")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if known == 0 or x.size % known:
            raise ShapeError(f"reshape: cannot reshape {x.shape} into {shape}")
        shape = tuple(x.size // known if s == -1 else s for s in shape)
    return x if shape == x.shape else emit("reshape", x, shape=shape)


def transpose(x: Var, axes: Sequence[int] | None = None) -> Var:
    x = as_var(x)
    axes = (
        tuple(reversed(range(x.ndim)))
        if axes is None
        else tuple(normalize_axis(a, x.ndim) for a in axes)
    )
    return x if axes == tuple(range(x.ndim)) else emit("transpose", x, axes=axes)


def swap_last(x: Var) -> Var:
    axes = list(range(x.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return transpose(x, axes)


def concat(xs: Sequence[Var], axis: int = 0) -> Var:
    xs = list(xs)
    if not xs:
        raise ShapeError("concat: needs at least one value")
    like = next((x for x in xs if isinstance(x, Var)), None)
    xs = [as_var(x, like) for x in xs]
    if len(xs) == 1:
        return xs[0]
    return emit("concat", *xs, axis=normalize_axis(axis, xs[0].ndim))


def getitem(x: Var, index: Any) -> Var:
    key = normalize_index(index, x.shape)
    return emit("getitem", x, index=key)


def normalize_index(index: Any, shape: tuple[int, ...]) -> tuple:
    """A hashable form of a NumPy index: ('s', start, stop, step) for slices, ints, None,
    Ellipsis, and ('a', tuple(ids)) for 1-D integer arrays. Bounds are checked here."""
    if not isinstance(index, tuple):
        index = (index,)
    out = []
    for item in index:
        if isinstance(item, slice):
            out.append(("s", item.start, item.stop, item.step))
        elif item is None or item is Ellipsis:
            out.append(item)
        elif isinstance(item, (int, np.integer)):
            out.append(int(item))
        elif isinstance(item, (list, np.ndarray)) and np.asarray(item).dtype.kind in "iu":
            out.append(("a", tuple(int(v) for v in np.asarray(item).ravel())))
        else:
            raise ArgumentTypeError(
                f"unsupported index {item!r}; use ints, slices, None, ... or 1-D int lists"
            )
    key = tuple(out)
    from .ops.indexing import index_shape  # the shape rule checks bounds

    index_shape(shape, index=key)
    return key


def matmul(a: Any, b: Any) -> Var:
    """NumPy matmul; 1-D operands are promoted to matrices and the extra axis removed."""
    like = a if isinstance(a, Var) else b
    a, b = as_var(a, like), as_var(b, like)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: scalar operands {a.shape} and {b.shape}; use * instead")
    if a.ndim == 1 and b.ndim == 1:
        return reshape(emit("matmul", reshape(a, (1, -1)), reshape(b, (-1, 1))), ())
    if a.ndim == 1:
        y = emit("matmul", reshape(a, (1, -1)), b)
        return reshape(y, y.shape[:-2] + y.shape[-1:])
    if b.ndim == 1:
        y = emit("matmul", a, reshape(b, (-1, 1)))
        return reshape(y, y.shape[:-1])
    return emit("matmul", a, b)


def embedding(weight: Var, ids: Var) -> Var:
    """Rows of `weight` selected by integer `ids` (0-based): shape ids.shape + (n_output,)."""
    return emit("embedding", weight, ids)


def gather(x: Var, ids: Var, axis: int = -1) -> Var:
    """`np.take_along_axis(x, ids, axis)`: picks one entry per row, e.g. the target's log-prob."""
    return emit("gather", x, ids, axis=normalize_axis(axis, x.ndim))


def emit_index_grad(g: Var, shape: tuple[int, ...], index: tuple) -> Var:
    """Zeros of `shape` with `g` placed (accumulated) at `index`: the adjoint of getitem."""
    return emit("index_grad", g, shape=tuple(shape), index=index)


# ---- Var's operators and methods: the functions above (tracing.Var is defined a layer below) ----


def _reshape_method(self: Var, *shape: Any) -> Var:
    return reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)


def _transpose_method(self: Var, *axes: Any) -> Var:
    return transpose(
        self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else (axes or None)
    )


_OPERATORS = {
    "__add__": lambda a, b: add(a, b),
    "__radd__": lambda a, b: add(b, a),
    "__sub__": lambda a, b: sub(a, b),
    "__rsub__": lambda a, b: sub(b, a),
    "__mul__": lambda a, b: mul(a, b),
    "__rmul__": lambda a, b: mul(b, a),
    "__truediv__": lambda a, b: div(a, b),
    "__rtruediv__": lambda a, b: div(b, a),
    "__pow__": lambda a, b: power(a, b),
    "__rpow__": lambda a, b: power(b, a),
    "__matmul__": lambda a, b: matmul(a, b),
    "__rmatmul__": lambda a, b: matmul(b, a),
    "__neg__": lambda a: neg(a),
    "__pos__": lambda a: a,
    "__abs__": lambda a: abs(a),
    "__gt__": lambda a, b: greater(a, b),
    "__lt__": lambda a, b: greater(b, a),
    "__getitem__": lambda a, idx: getitem(a, idx),
    "T": property(lambda self: transpose(self)),
    "sum": lambda self, axis=None, keepdims=False: sum(self, axis, keepdims),
    "max": lambda self, axis=None, keepdims=False: max(self, axis, keepdims),
    "min": lambda self, axis=None, keepdims=False: min(self, axis, keepdims),
    "reshape": _reshape_method,
    "transpose": _transpose_method,
    "astype": lambda self, dtype: cast(self, dtype),
}


# NumPy on a Var: the operators NumPy routes here (ndarray + Var) record the op; any other NumPy
# function is a mistake inside a cell or traced function -> say which tn.* op to use
_OPERATOR_UFUNCS = {  # ufunc -> (Var's operator, its reflected form)
    "add": ("__add__", "__radd__"),
    "subtract": ("__sub__", "__rsub__"),
    "multiply": ("__mul__", "__rmul__"),
    "divide": ("__truediv__", "__rtruediv__"),
    "true_divide": ("__truediv__", "__rtruediv__"),
    "power": ("__pow__", "__rpow__"),
    "matmul": ("__matmul__", "__rmatmul__"),
    "greater": ("__gt__", "__lt__"),
    "less": ("__lt__", "__gt__"),
}


def _where() -> str:
    return located(current_scope() or None, current_step())


def _array_ufunc(self: Var, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
    ops = _OPERATOR_UFUNCS.get(ufunc.__name__)
    if ops is not None and method == "__call__" and not kwargs and len(inputs) == 2:
        a, b = inputs
        return getattr(a, ops[0])(b) if isinstance(a, Var) else getattr(b, ops[1])(a)
    called = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
    raise TracingError(numpy_on_var(called, ufunc.__name__, _where()))


def _array_function(self: Var, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
    raise TracingError(numpy_on_var(func.__name__, func.__name__, _where()))


def _no_attribute(self: Var, name: str) -> Any:
    """An ndarray attribute a Var lacks (`.any()`, `.squeeze()`): which tn.* op to use, as
    for NumPy's functions, not Python's bare "'Var' object has no attribute" (an
    AttributeError all the same: hasattr stays False)."""
    if name.startswith("__"):  # (protocol probes: hasattr(v, "__tapernn_var__"), copy, ...)
        raise AttributeError(name)
    raise VarAttributeError(
        f"a symbolic tn.Var has no attribute {name!r} (ndarray.{name}){_where()}; "
        f"{tn_instead(name)}"
    )


_OPERATORS.update(
    __array_ufunc__=_array_ufunc, __array_function__=_array_function, __getattr__=_no_attribute
)
for _name, _method in _OPERATORS.items():
    setattr(Var, _name, _method)
