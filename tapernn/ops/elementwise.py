"""Elementwise ops: arithmetic, transcendental functions, comparisons, selection, casts, fills.

Each block: shape rule, NumPy forward (ufuncs take `out=` directly), VJP, flags.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..errors import ShapeError
from .registry import broadcast_shape, register, same_shape

ub = F.unbroadcast


def _sigmoid(x, out=None):
    # exp(-|x|) never overflows; the two branches keep full relative precision in both tails
    e = np.exp(-np.abs(x))
    num = np.where(x >= 0, 1.0, e).astype(e.dtype, copy=False)
    return np.divide(num, 1.0 + e, out=out)


def _relu(x, out=None):
    return np.maximum(x, 0, out=out)


def _bool(*dtypes, **_):
    return np.bool_


def _binary(name, ufunc, vjp, zero="", kinds="fiub"):
    register(
        name,
        forward=ufunc,
        ufunc=ufunc,
        shape=broadcast_shape,
        vjp=vjp,
        elementwise=True,
        inplace=(0, 1),
        n_inputs=2,
        zero=zero,
        kinds=kinds,
    )


def _unary(name, forward, vjp, zero="", ufunc=None, kinds="fiub"):
    register(
        name,
        forward=forward,
        ufunc=ufunc,
        shape=same_shape,
        vjp=vjp,
        elementwise=True,
        inplace=(0,),
        n_inputs=1,
        zero=zero,
        kinds=kinds,
    )


_binary(
    "add",
    np.add,
    lambda g, y, a, b, wants: (
        ub(g, a.shape) if wants[0] else None,
        ub(g, b.shape) if wants[1] else None,
    ),
    zero="sum",
)
_binary(
    "sub",
    np.subtract,
    lambda g, y, a, b, wants: (
        ub(g, a.shape) if wants[0] else None,
        ub(-g, b.shape) if wants[1] else None,
    ),
    zero="difference",
    kinds="fiu",
)
_binary(
    "mul",
    np.multiply,
    lambda g, y, a, b, wants: (
        ub(g * b, a.shape) if wants[0] else None,
        ub(g * a, b.shape) if wants[1] else None,
    ),
    zero="any",
)
_binary(
    "div",
    np.divide,  # 0 / b == 0 (0 / 0 taken as 0, as for 0 * inf)
    lambda g, y, a, b, wants: (
        ub(g / b, a.shape) if wants[0] else None,
        ub(-g * y / b, b.shape) if wants[1] else None,
    ),
    zero="first",
    kinds="f",  # (NumPy: int / int is float64, int8 / int8 too)
)


def _nonzero_constant(v) -> bool:
    return v.node.op == "constant" and v.node.value is not None and bool(np.all(v.node.value))


def _power_vjp(g, y, a, b, wants):
    """torch's gradients of a ** b, finite where they are 0 in the limit: d/da is 0 where
    b == 0 (not 0 * 0 ** -1 = NaN), d/db is 0 where a == 0 and b >= 0 (not 0 * log 0 = NaN)."""
    da = db = None
    if wants[0]:
        da = b * a ** (b - 1)
        if not _nonzero_constant(b):  # (a constant exponent without zeros: the plain formula)
            da = F.where(F.equal(b, 0.0), 0.0, da)
        da = ub(g * da, a.shape)
    if wants[1]:
        db = y * F.log(a)
        db = F.where(F.equal(a, 0.0), F.where(F.greater(0.0, b), db, 0.0), db)
        db = ub(g * db, b.shape)
    return da, db


_binary("power", np.power, _power_vjp, kinds="fiu")


def _maximum_vjp(g, y, a, b, wants, flip=False):
    wins = F.greater(b, a) if flip else F.greater(a, b)
    share = F.where(wins, 1.0, F.where(F.equal(a, b), 0.5, 0.0))  # ties split the gradient
    share = F.cast(share, g.dtype)
    return (
        ub(g * share, a.shape) if wants[0] else None,
        ub(g * (1 - share), b.shape) if wants[1] else None,
    )


_binary("maximum", np.maximum, _maximum_vjp)
_binary("minimum", np.minimum, lambda *a, wants: _maximum_vjp(*a, wants=wants, flip=True))

register(
    "greater",
    forward=np.greater,
    ufunc=np.greater,
    shape=broadcast_shape,
    vjp=None,
    dtype=_bool,
    elementwise=True,
    n_inputs=2,
    differentiable=False,
)
register(
    "equal",
    forward=np.equal,
    ufunc=np.equal,
    shape=broadcast_shape,
    vjp=None,
    dtype=_bool,
    elementwise=True,
    n_inputs=2,
    differentiable=False,
)
register(
    "sign",
    forward=np.sign,
    ufunc=np.sign,
    shape=same_shape,
    vjp=None,
    elementwise=True,
    inplace=(0,),
    n_inputs=1,
    differentiable=False,
    zero="first",
    kinds="fiu",
)

# kinds: "f" float-only, "fiu" no bool form in NumPy (registry.refuse_kind)
_unary("neg", np.negative, lambda g, y, a, wants: (-g,), "first", np.negative, "fiu")
_unary("exp", np.exp, lambda g, y, a, wants: (g * y,), ufunc=np.exp, kinds="f")
_unary("log", np.log, lambda g, y, a, wants: (g / a,), ufunc=np.log, kinds="f")
_unary("tanh", np.tanh, lambda g, y, a, wants: (g * (1 - y * y),), "first", np.tanh, "f")
_unary("sigmoid", _sigmoid, lambda g, y, a, wants: (g * y * (1 - y),), kinds="f")
_unary(
    "relu", _relu, lambda g, y, a, wants: (F.where(F.greater(a, 0), g, 0),), "first", kinds="fiu"
)
_unary("sqrt", np.sqrt, lambda g, y, a, wants: (g * 0.5 / y,), "first", np.sqrt, "f")
_unary("abs", np.abs, lambda g, y, a, wants: (g * F.sign(a),), zero="first", ufunc=np.abs)


def _where_shape(c, x, y, **_):
    return broadcast_shape(c, x, y)


def _where_dtype(c, x, y, **_):
    if c != np.bool_:
        raise ShapeError(f"where: condition must be boolean, got {c}")
    return np.result_type(x, y)


register(
    "where",
    forward=lambda c, x, y, out=None: np.where(c, x, y),
    shape=_where_shape,
    dtype=_where_dtype,
    supports_out=False,
    elementwise=True,
    n_inputs=3,
    zero="branches",
    vjp=lambda g, y, c, a, b, wants: (
        None,
        ub(F.where(c, g, 0), a.shape) if wants[1] else None,
        ub(F.where(c, 0, g), b.shape) if wants[2] else None,
    ),
)


def _cast(x, dtype, out=None):
    if out is None:
        return x.astype(dtype)
    np.copyto(out, x, casting="unsafe")
    return out


register(
    "cast",
    forward=_cast,
    shape=same_shape,
    dtype=lambda x, dtype: np.dtype(dtype),
    elementwise=True,
    n_inputs=1,
    layout=True,
    zero="first",
    vjp=lambda g, y, a, wants, dtype: (F.cast(g, a.dtype) if a.dtype.kind == "f" else None,),
)

register(
    "stop_gradient",
    forward=lambda x, out=None: x,
    shape=same_shape,
    supports_out=False,
    view=True,
    n_inputs=1,
    zero="first",
    vjp=lambda g, y, a, wants: (None,),
)


def _fill(value):
    def forward(shape, dtype, out=None):
        if out is None:
            return np.full(shape, value, dtype=dtype)
        out.fill(value)
        return out

    return forward


def _lower_fill(value):
    """zeros / ones as one line (no call of the op's forward: ~0.5 us a call, the reverse
    loop's zero initial carries every backward): out.fill, or np.full per call."""

    def lower(args, attrs, out, bind):
        if out is not None:  # (ndarray.fill returns None: the expression's value is `out`)
            return f"({out}.fill({value}) or {out})"
        shape = bind("s", tuple(int(d) for d in attrs["shape"]))
        dtype = bind("d", np.dtype(attrs["dtype"]))
        return f"{bind('np_full', np.full, fixed=True)}({shape}, {value}, {dtype})"

    return lower


for _name, _value in (("zeros", 0), ("ones", 1)):
    register(
        _name,
        forward=_fill(_value),
        lower=_lower_fill(_value),
        shape=lambda shape, dtype: tuple(shape),
        dtype=lambda shape, dtype: np.dtype(dtype),
        n_inputs=0,
        vjp=lambda g, y, wants, **_: (),
    )


def _add_n_shape(*shapes, **_):
    if any(s != shapes[0] for s in shapes):
        raise ShapeError(f"add_n: all shapes must be equal, got {', '.join(map(str, shapes))}")
    return tuple(shapes[0])


def _add_n(*xs, out=None):
    out = np.add(xs[0], xs[1], out=out)
    for x in xs[2:]:  # 0-d sums come back as NumPy scalars, which cannot be written into
        out = np.add(out, x, out=out if isinstance(out, np.ndarray) else None)
    return out


# the longest sum lowered as nested np.add calls: Python's parser refuses an expression nested
# 200 deep (SyntaxError "too many nested parentheses": SeqGRU's weight gradient summed over 150
# steps); a longer one calls _add_n, which adds in the same order (the same bits)
NESTED_ADDS_MAX = 32


def _lower_add_n(args, attrs, out, bind):
    if out is None and len(args) == 2:  # what _add_n computes, without its Python call
        return f"{bind('np_add', np.add, fixed=True)}({args[0]}, {args[1]})"
    if out is None or len(args) > NESTED_ADDS_MAX:
        into = "" if out is None else f", out={out}"
        return f"{bind('f_add_n', _add_n, fixed=True)}({', '.join(args)}{into})"
    # chained into out: only input 0 may share out (inplace=(0,)), so the later operands are
    # never overwritten before they are read
    expr = args[0]
    for a in args[1:]:
        expr = f"{bind('np_add', np.add, fixed=True)}({expr}, {a}, out={out})"
    return expr


register(
    "add_n",
    forward=_add_n,
    shape=_add_n_shape,
    elementwise=True,
    inplace=(0,),
    zero="sum",
    lower=_lower_add_n,
    vjp=lambda g, y, *xs, wants: tuple(g if w else None for w in wants),
)
