"""Reductions (sum, max, logsumexp) and broadcast_to, their adjoint."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..errors import ShapeError
from .registry import register


def reduce_shape(x, axis, keepdims, **_):
    if any(a >= len(x) for a in axis):
        raise ShapeError(f"axis {axis} out of range for shape {x}")
    if keepdims:
        return tuple(1 if k in axis else s for k, s in enumerate(x))
    return tuple(s for k, s in enumerate(x) if k not in axis)


def kept(g, x, axis):
    """`g` (reduced over `axis`) reshaped with the reduced axes kept as size 1."""
    return F.reshape(g, tuple(1 if k in axis else s for k, s in enumerate(x.shape)))


def _sum(x, axis, keepdims, out=None):
    return np.sum(x, axis=axis, keepdims=keepdims, out=out)


def _lower_sum(args, attrs, out, bind):
    axis = bind("s", tuple(int(d) for d in attrs["axis"]))
    tail = f", out={out}" if out else ""
    return (
        f"{bind('np_add_reduce', np.add.reduce, fixed=True)}({args[0]}, {axis}, None{tail}, "
        f"keepdims={bool(attrs['keepdims'])})"
    )


def _sum_dtype(x, **_):
    """np.add.reduce's dtype: integers (and bools: a count) narrower than the platform's
    integer are summed in it (int8 -> int64, uint8 -> uint64), as the program runs them."""
    if x.kind == "f":
        return x
    return np.add.reduce(np.zeros(1, x)).dtype


register(
    "sum",
    forward=_sum,
    shape=reduce_shape,
    dtype=_sum_dtype,
    n_inputs=1,
    zero="first",
    lower=_lower_sum,
    vjp=lambda g, y, x, wants, axis, keepdims: (F.broadcast_to(kept(g, x, axis), x.shape),),
)


def _max(x, axis, keepdims, out=None):
    return np.max(x, axis=axis, keepdims=keepdims, out=out)


def _max_vjp(g, y, x, wants, axis, keepdims):
    hit = F.equal(x, kept(y, x, axis))
    count = F.sum(F.cast(hit, g.dtype), axis, keepdims=True)  # ties share the gradient
    return (F.where(hit, kept(g, x, axis) / count, 0),)


register("max", forward=_max, shape=reduce_shape, n_inputs=1, vjp=_max_vjp, zero="first")


def _logsumexp(x, axis, keepdims, out=None):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)
    s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    if not keepdims:
        s = np.squeeze(s, axis=axis)
    if out is not None:
        np.copyto(out, s)
        return out
    return s


register(
    "logsumexp",
    forward=_logsumexp,
    shape=reduce_shape,
    n_inputs=1,
    kinds="f",
    vjp=lambda g, y, x, wants, axis, keepdims: (kept(g, x, axis) * F.exp(x - kept(y, x, axis)),),
)


def _broadcast_shape(x, shape, **_):
    try:
        if tuple(np.broadcast_shapes(x, shape)) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ShapeError(f"cannot broadcast {x} to {shape}") from None
    return tuple(shape)


def _broadcast_to(x, shape, out=None):
    if out is None:
        return np.broadcast_to(x, shape)
    np.copyto(out, x)
    return out


register(
    "broadcast_to",
    forward=_broadcast_to,
    shape=_broadcast_shape,
    n_inputs=1,
    view=True,
    layout=True,
    zero="first",
    vjp=lambda g, y, x, wants, shape: (F.unbroadcast(g, x.shape),),
)


def _sum_mul_shape(a, b, axis, keepdims, **_):
    if tuple(a) != tuple(b):
        raise ShapeError(f"sum_mul needs operands of one shape, got {a} and {b}")
    return reduce_shape(a, axis, keepdims)


def _subscripts(ndim: int, axis: tuple) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"[:ndim]
    return f"{letters},{letters}->{''.join(c for k, c in enumerate(letters) if k not in axis)}"


def _sum_mul(a, b, axis, keepdims, out=None):
    """sum(a * b, axis) without the product's array (np.einsum's sum of products: the
    peephole LSTM's weight gradient over every step, issue 19: a (T, B, H) temporary less)."""
    r = np.einsum(_subscripts(np.ndim(a), tuple(axis)), a, b)
    if keepdims:
        r = np.reshape(r, reduce_shape(np.shape(a), axis, True))
    if out is not None:
        out[...] = r
        return out
    return np.asarray(r)


register(
    "sum_mul",
    forward=_sum_mul,
    shape=_sum_mul_shape,
    n_inputs=2,
    kinds="f",  # (made for gradients only: an integer product would wrap where sum's does not)
    zero="any",
    vjp=lambda g, y, a, b, wants, axis, keepdims: (
        F.broadcast_to(kept(g, a, axis), a.shape) * b if wants[0] else None,
        F.broadcast_to(kept(g, b, axis), b.shape) * a if wants[1] else None,
    ),
)
