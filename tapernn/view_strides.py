"""Reshapes that copy: a reshape of a strided view (columns of a rolled loop's slab merged with
its rows, `slab[:, a:b].reshape(T * B, H)`) is a new array NumPy allocates, not a view. Found
statically, from each view chain's strides with its root taken as C-contiguous."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .graph import Graph, Node
from .ops.indexing import is_advanced, to_numpy_index
from .ops.registry import PSEUDO, get_op

_IDENTITY = ("stop_gradient", "add_loss")


def copying_reshapes(graph: Graph) -> set[Node]:
    """The reshape nodes of `graph` whose input's layout makes NumPy copy: their result is an
    allocation of its own (it lives until its last read, through its views), where the memory
    plan sees a view. Every chain starts from a C-contiguous array (an input, a constant, an
    op's result: a value the plan computes into a slot of a concat is not followed); a value
    whose layout is unknown (an advanced index, broadcast_to) counts as a view."""
    probes: dict[Node, np.ndarray | None] = {}
    copies: set[Node] = set()
    for n in graph.nodes:
        if n.op in PSEUDO or not get_op(n.op).view:
            continue  # its own storage: C-contiguous (its probe made when a view reads it)
        i = n.inputs[0]
        x = probes[i] if i in probes else _contiguous(i)
        probes[n] = _view(n, x, copies) if x is not None else None
    return copies


def _contiguous(n: Node) -> np.ndarray | None:
    """A probe with n's shape and C strides over one element: slicing, transposing and
    reshaping it without a copy touch no memory."""
    try:
        dtype = np.dtype(n.dtype)
        shape = tuple(int(d) for d in n.shape)
    except TypeError:
        return None
    strides, step = [], dtype.itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return as_strided(np.empty(1, dtype), shape, tuple(reversed(strides)), writeable=False)


def _view(n: Node, x: np.ndarray, copies: set[Node]) -> np.ndarray | None:
    if n.op in _IDENTITY:
        return x
    if n.op == "transpose":
        return x.transpose(tuple(int(a) for a in n.attrs["axes"]))
    if n.op == "getitem":
        index = n.attrs["index"]
        return None if is_advanced(index) else x[to_numpy_index(index)]
    if n.op == "reshape":
        shape = tuple(int(d) for d in n.attrs["shape"])
        try:
            return np.reshape(x, shape, copy=False)
        except ValueError:  # NumPy would copy
            copies.add(n)
            return _contiguous(n)
    return None  # broadcast_to and other views: layout not followed


def copy_roots(graph: Graph, copies: set[Node]) -> dict[Node, Node]:
    """Value -> the copying reshape whose result it is or views (through view ops only)."""
    roots: dict[Node, Node] = {}
    for n in graph.nodes:
        if n in copies:
            roots[n] = n
        elif n.op not in PSEUDO and get_op(n.op).view and n.inputs[0] in roots:
            roots[n] = roots[n.inputs[0]]
    return roots
