"""Neural-network ops: softmax, log_softmax, embedding lookup, gather (and their adjoints)."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..errors import DTypeError, ShapeError, ValueRangeError
from .registry import register, same_shape


def _softmax(x, axis, out=None):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True), out=out)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


register(
    "softmax",
    forward=_softmax,
    shape=same_shape,
    n_inputs=1,
    kinds="f",
    vjp=lambda g, y, x, wants, axis: (y * (g - F.sum(g * y, axis, keepdims=True)),),
)


def _log_softmax(x, axis, out=None):
    m = np.max(x, axis=axis, keepdims=True)
    s = np.subtract(x, m, out=out)
    s -= np.log(np.sum(np.exp(s), axis=axis, keepdims=True))
    return s


register(
    "log_softmax",
    forward=_log_softmax,
    shape=same_shape,
    n_inputs=1,
    kinds="f",
    vjp=lambda g, y, x, wants, axis: (g - F.exp(y) * F.sum(g, axis, keepdims=True),),
)


def _int_ids(dtype):
    if dtype.kind not in "iu":
        raise DTypeError(f"ids must be integers, got {dtype}")


def check_ids(ids: np.ndarray, n: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)].ravel()[0]
        raise ValueRangeError(f"{what} {bad} out of range: expected 0 <= id < {n} (0-based)")


def _embedding(w, ids, out=None):
    check_ids(ids, w.shape[0], "id")
    return np.take(w, ids, axis=0, out=out)


def _embedding_shape(w, ids, **_):
    if len(w) != 2:
        raise ShapeError(f"embedding weight must be 2-d (n_index, n_output), got {w}")
    return tuple(ids) + (w[1],)


def _embedding_dtype(w, ids, **_):
    _int_ids(ids)
    return w


register(
    "embedding",
    forward=_embedding,
    shape=_embedding_shape,
    dtype=_embedding_dtype,
    n_inputs=2,
    vjp=lambda g, y, w, ids, wants: (
        F.emit("embedding_grad", g, ids, n=w.shape[0]) if wants[0] else None,
        None,
    ),
)


def _embedding_grad(g, ids, n, out=None):
    d = g.shape[-1]
    if out is None:
        out = np.zeros((n, d), dtype=g.dtype)
    else:
        out.fill(0)
    np.add.at(out, ids.ravel(), g.reshape(-1, d))  # repeated ids accumulate
    return out


def _embedding_grad_shape(g, ids, n):
    if tuple(g[:-1]) != tuple(ids):
        raise ShapeError(f"embedding_grad: gradient {g} does not match ids {ids}")
    return (n, g[-1])


register(
    "embedding_grad",
    forward=_embedding_grad,
    shape=_embedding_grad_shape,
    dtype=lambda g, ids, n: g,
    n_inputs=2,
    zero="first",
    vjp=lambda gg, y, g, ids, wants, n: (F.embedding(gg, ids) if wants[0] else None, None),
)


def _gather_shape(x, ids, axis):
    if len(x) != len(ids) or any(a != b for k, (a, b) in enumerate(zip(x, ids)) if k != axis):
        raise ShapeError(f"gather along axis {axis}: ids {ids} must match values {x} off that axis")
    return tuple(ids)


def _gather(x, ids, axis, out=None):
    check_ids(ids, x.shape[axis], "index")
    y = np.take_along_axis(x, ids, axis=axis)
    if out is not None:
        np.copyto(out, y)
        return out
    return y


def _gather_dtype(x, ids, **_):
    _int_ids(ids)
    return x


register(
    "gather",
    forward=_gather,
    shape=_gather_shape,
    dtype=_gather_dtype,
    n_inputs=2,
    vjp=lambda g, y, x, ids, wants, axis: (
        F.emit("scatter_add", g, ids, axis=axis, n=x.shape[axis]) if wants[0] else None,
        None,
    ),
)


def _scatter_add(g, ids, axis, n, out=None):
    shape = g.shape[:axis] + (n,) + g.shape[axis + 1 :]
    if out is None:
        out = np.zeros(shape, dtype=g.dtype)
    else:
        out.fill(0)
    index = list(np.indices(ids.shape, sparse=True))
    index[axis] = ids
    np.add.at(out, tuple(index), g)
    return out


register(
    "scatter_add",
    forward=_scatter_add,
    shape=lambda g, ids, axis, n: g[:axis] + (n,) + g[axis + 1 :],
    dtype=lambda g, ids, **_: g,
    n_inputs=2,
    zero="first",
    vjp=lambda gg, y, g, ids, wants, axis, n: (F.gather(gg, ids, axis) if wants[0] else None, None),
)


def _add_loss_shape(x, loss, **_):
    if tuple(loss) != ():
        raise ShapeError(f"add_loss: the loss must be a scalar, got shape {tuple(loss)}")
    return tuple(x)


# forward: x itself; backward: the loss's cotangent is 1 whatever x's is, so the loss joins the
# objective being differentiated (a regulariser's gradient, e.g. NormStabilizer's)
register(
    "add_loss",
    forward=lambda x, loss, out=None: x,
    shape=_add_loss_shape,
    supports_out=False,
    view=True,
    n_inputs=2,
    vjp=lambda g, y, x, loss, wants: (
        g if wants[0] else None,
        F.ones_like(loss) if wants[1] else None,
    ),
)
