"""Shape ops: reshape, transpose, concat, indexing (getitem) and its adjoint index_grad."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..errors import ShapeError
from .indexing import index_shape, is_advanced, show_index, to_numpy_index
from .registry import register


def _reshape_shape(x, shape, **_):
    if int(np.prod(x, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
        raise ShapeError(f"cannot reshape {x} into {shape}")
    return tuple(shape)


register(
    "reshape",
    forward=lambda x, shape, out=None: np.reshape(x, shape),
    shape=_reshape_shape,
    supports_out=False,
    view=True,
    layout=True,
    zero="first",
    n_inputs=1,
    lower=lambda args, attrs, out, bind: (
        f"{args[0]}.reshape({bind('s', tuple(int(d) for d in attrs['shape']))})"
    ),
    vjp=lambda g, y, x, wants, shape: (F.reshape(g, x.shape),),
)


def _transpose_shape(x, axes, **_):
    if sorted(axes) != list(range(len(x))):
        raise ShapeError(f"axes {axes} are not a permutation for shape {x}")
    return tuple(x[a] for a in axes)


register(
    "transpose",
    forward=lambda x, axes, out=None: np.transpose(x, axes),
    shape=_transpose_shape,
    supports_out=False,
    view=True,
    layout=True,
    zero="first",
    n_inputs=1,
    lower=lambda args, attrs, out, bind: (
        f"{args[0]}.transpose({bind('s', tuple(int(d) for d in attrs['axes']))})"
    ),
    vjp=lambda g, y, x, wants, axes: (F.transpose(g, tuple(np.argsort(axes))),),
)


def _concat_shape(*shapes, axis):
    first = shapes[0]
    for s in shapes[1:]:
        if len(s) != len(first) or any(
            a != b for k, (a, b) in enumerate(zip(s, first)) if k != axis
        ):
            raise ShapeError(
                f"concat along axis {axis}: shapes {', '.join(map(str, shapes))} "
                f"differ off that axis"
            )
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1 :]


def _concat(*xs, axis, out=None):
    return np.concatenate(xs, axis=axis, out=out)


def _concat_vjp(g, y, *xs, wants, axis):
    grads, start = [], 0
    for x, w in zip(xs, wants):
        stop = start + x.shape[axis]
        grads.append(g[(slice(None),) * axis + (slice(start, stop),)] if w else None)
        start = stop
    return tuple(grads)


def _lower_concat(args, attrs, out, bind):  # np.concatenate directly: no wrapper frame
    tail = f", out={out}" if out else ""
    fn = bind("np_concatenate", np.concatenate, fixed=True)
    return f"{fn}(({', '.join(args)},), axis={int(attrs['axis'])}{tail})"


register(
    "concat",
    forward=_concat,
    shape=_concat_shape,
    vjp=_concat_vjp,
    layout=True,
    zero="all",
    lower=_lower_concat,
)


def _getitem(x, index, out=None):
    y = x[to_numpy_index(index)]
    if out is not None:
        np.copyto(out, y)
        return out
    return y


def _lower_getitem(args, attrs, out, bind):
    if is_advanced(attrs["index"]):  # a copy: the forward
        kw = bind("k", attrs["index"])
        return f"{bind('f_getitem', _getitem, fixed=True)}({args[0]}, index={kw})"
    return f"{args[0]}[{bind('i', to_numpy_index(attrs['index']))}]"


register(
    "getitem",
    forward=_getitem,
    shape=index_shape,
    n_inputs=1,
    view=True,
    supports_out=False,
    layout=True,
    zero="first",
    lower=_lower_getitem,
    vjp=lambda g, y, x, wants, index: (F.emit_index_grad(g, x.shape, index),),
)


def _index_grad_shape(g, shape, index):
    if tuple(index_shape(tuple(shape), index)) != tuple(g):
        raise ShapeError(f"index_grad: gradient {g} does not fit {shape}{show_index(index)}")
    return tuple(shape)


def _index_grad(g, shape, index, out=None):
    if out is None:
        out = np.zeros(shape, dtype=g.dtype)
    else:
        out.fill(0)
    idx = to_numpy_index(index)
    if is_advanced(index):
        np.add.at(out, idx, g)  # repeated ids accumulate
    else:
        out[idx] = g
    return out


register(
    "index_grad",
    forward=_index_grad,
    shape=_index_grad_shape,
    n_inputs=1,
    zero="first",
    vjp=lambda g, y, x, wants, shape, index: (F.emit("getitem", g, index=index),),
)


# tiles of the transposed copy: a plain np.copyto(out, x.T) of a 4 MB float32 matrix ran 1.8x
# slower than 32 source rows by 512 columns at a time (2-core EPYC, BENCHMARKS.md "hspeed")
_TILE_ROWS, _TILE_COLS, _TILE_MIN = 32, 512, 65536


def _transpose_copy(x, out=None):
    """x.T (2-D) as a C-contiguous array: `out` when given, written tile by tile."""
    if out is None:
        out = np.empty(x.shape[::-1], dtype=x.dtype)
    if x.size < _TILE_MIN:
        np.copyto(out, x.T)
        return out
    rows, cols = x.shape
    for i in range(0, rows, _TILE_ROWS):
        for j in range(0, cols, _TILE_COLS):
            tile = x[i : i + _TILE_ROWS, j : j + _TILE_COLS]
            out[j : j + _TILE_COLS, i : i + _TILE_ROWS] = tile.T
    return out


def _transpose_copy_shape(x):
    if len(x) != 2:
        raise ShapeError(f"transpose_copy: expected a 2-D operand, got shape {x}")
    return (x[1], x[0])


register(
    "transpose_copy",  # the transpose materialised (passes/loop_operands.py: NN loop GEMMs)
    forward=_transpose_copy,
    shape=_transpose_copy_shape,
    n_inputs=1,
    zero="first",
    vjp=lambda g, y, x, wants: (F.transpose(g, (1, 0)),),
)
