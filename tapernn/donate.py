"""Donated inputs (PlanOptions.dz_in_gates, issue 16): a TrainingPair's backward may write its
reverse loop's slab (final dh, dc | the T rows of dZ) over the prefix of the forward's saved
slab (final h, c | the T gate rows), which nothing reads once the loop has read each row.
Analyses only (the walk and codegen act on what they return):

- `donatable(graph, plan, n_saved)` (the forward): per backward input position j (the saved
  value j), how many leading elements of it no other output of the forward (kept or saved)
  reads; only a saved value computed into a fresh flat storage of its own qualifies.
- `donations(graph, root, donatable)` (the backward): loop node -> the input it is computed
  into (its first `size` elements): the loop's result fits in that prefix, the input's prefix is
  read only by the loop's xs (the runner checks every call that no xs row is written over
  before its step reads it -- row t inside the loop's row t, or behind it in a reverse loop:
  ops.registry.rows_writable --, else it writes a slab of its own: scan_run.writable_over_xs;
  checked here too, so the plan is what runs) or by nodes
  scheduled before the loop, and nothing returned is a view of it."""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node
from .ops.registry import PSEUDO, get_op, rows_writable


def _view(n: Node) -> bool:
    return n.op not in PSEUDO and get_op(n.op).view


def _values(v: Node, base: Node) -> np.ndarray | None:
    """The element indices of `base` (flat) that view `v` of it holds (None when unsure)."""
    chain = []
    while v is not base:
        if not _view(v) or len(v.inputs) != 1:
            return None
        chain.append(v)
        v = v.inputs[0]
    arr = np.arange(base.size).reshape(base.shape)
    try:
        for n in reversed(chain):
            arr = np.asarray(get_op(n.op).forward(arr, **n.attrs))
    except (TypeError, ValueError, IndexError, KeyError, AttributeError):
        return None
    return arr


def _lowest(v: Node, base: Node) -> int:
    """The lowest element index of `base` (flat) that view `v` of it covers (0 when unsure)."""
    arr = _values(v, base)
    if arr is None:
        return 0
    return base.size if arr.size == 0 else int(arr.min())


def _rows_aligned(v: Node, base: Node, s: Node) -> bool:
    """Whether xs view `v` of `base` has its rows where loop s, computed into base's leading
    elements, writes no row before the step that reads them (ops.registry.rows_writable:
    row t inside the loop's row t, or behind it in step order), so the runner writes over it
    directly (it checks this every call, and otherwise writes a slab of
    its own: a per-call array the plan would not count)."""
    rule = get_op(s.op).rows
    rows = rule(s) if rule is not None else None
    arr = _values(v, base)
    if rows is None or arr is None or arr.ndim == 0 or arr.size == 0:
        return False
    _, start, row, length = rows
    if arr.shape[0] != length:
        return False
    flat = arr.reshape(length, -1)
    return rows_writable(
        flat.min(axis=1),
        flat.max(axis=1) + 1,
        np.arange(length),
        start,
        row,
        length,
        bool(s.attrs.get("reverse")),
    )


def donatable(graph: Graph, plan, n_saved: int) -> dict[int, int]:
    """Backward input position -> the number of leading elements of that saved value which no
    other output of the forward reads (positions absent: not donatable)."""
    outs = graph.outputs
    first = len(outs) - n_saved
    out: dict[int, int] = {}
    for j in range(n_saved):
        o = outs[first + j]
        if (
            o.op in PSEUDO
            or _view(o)
            or o.ndim != 1
            or outs.count(o) != 1
            or plan.storage.get(o) is not o
            or o not in plan.fresh
        ):
            continue
        limit = o.size
        for q in outs:
            if q is not o and plan.storage.get(q) is o:
                limit = min(limit, _lowest(q, o))
        out[j] = limit
    return out


def donations(graph: Graph, root: dict[Node, Node], donate: dict[int, int]) -> dict[Node, Node]:
    """Loop node -> input node it may be computed into (see the module docstring)."""
    pos = {n: k for k, n in enumerate(graph.nodes)}
    found: dict[Node, Node] = {}
    for j, limit in donate.items():
        if j >= len(graph.inputs):
            continue
        inp = graph.inputs[j]
        if inp.ndim != 1 or graph.inputs.count(inp) != 1:
            continue
        loops = [
            s
            for s in graph.nodes
            if s.op == "scan"
            and s not in found
            and s.ndim == 1
            and s.dtype == inp.dtype
            and s.size <= min(limit, inp.size)
        ]
        for s in sorted(loops, key=lambda s: -s.size):
            if _only_early_or_xs(graph, root, pos, inp, s):
                found[s] = inp
                break
    return found


def _only_early_or_xs(graph: Graph, root: dict, pos: dict, inp: Node, s: Node) -> bool:
    """Whether every read of inp's first s.size elements is by s's xs or before s, and no
    returned value is a view of inp reaching into them."""
    size = s.size
    nc, nx = s.attrs["n_carry"], s.attrs["n_xs"]
    for o in graph.outputs:
        if root.get(o) is inp and _lowest(o, inp) < size:
            return False
    for m in graph.nodes:
        if m.op in PSEUDO or _view(m):
            continue
        for p, v in enumerate(m.inputs):
            if root.get(v) is not inp:
                continue
            if m is s and nc <= p < nc + nx:
                if _rows_aligned(v, inp, s):
                    continue
                return False
            if m is not s and pos[m] < pos[s]:
                continue
            if _lowest(v, inp) < size:
                return False
    return True
