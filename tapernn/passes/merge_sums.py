"""One reduction for several column sums after a loop (issue 16 at small sizes): sums over the
same leading axes of values that differ only in their last axis -- a rolled LSTM's bias
gradients, the column blocks [dz_i dz_f dz_g dz_o] of its reverse loop's slab summed over
(T, B), and its peephole gradients sum(dz_k * c) -- become ONE sum of their concat along the
last axis, then slices: `fuse_row_sums` for the stacks of unrolled graphs, here for the
(T, B, n) slab views of rolled ones. A concat of adjacent column blocks of one value is a view
of it (any size); a concat of other values is a new array (its pieces computed into it), made
only while it is small (`SMALL_CONCAT_BYTES`: a call costs more than the copy there)."""

from __future__ import annotations

from ..graph import Graph, Node
from .concat import basic_ranges, make_concat, slice_axis
from .rewrite import accept_independent, derive, read_once, substitute

SMALL_CONCAT_BYTES = 64 * 1024


def merge_column_sums(graph: Graph) -> Graph:
    once = read_once(graph)
    groups: dict[tuple, list[Node]] = {}
    for n in graph.nodes:
        if n.op != "sum" or n.attrs.get("keepdims") or n.ndim != 1:
            continue
        x = n.inputs[0]
        axes = tuple(a % x.ndim for a in n.attrs["axis"] or range(x.ndim))
        if x.ndim < 2 or axes != tuple(range(x.ndim - 1)):
            continue  # (all axes but the last: a vector of column sums)
        view = _column_block(x)
        if view is None and not once(x):
            continue
        key = (x.shape[:-1], x.dtype, n.step, n.phase, "view" if view else "new")
        groups.setdefault(key, []).append(n)
    subst: dict[Node, Node] = {}
    for key, members in accept_independent(graph, groups, lambda m: m.inputs).items():
        if key[-1] == "view":
            by_base: dict[Node, list[Node]] = {}
            for m in members:
                by_base.setdefault(m.inputs[0].inputs[0], []).append(m)
            for part in by_base.values():
                part.sort(key=lambda m: _column_block(m.inputs[0])[0])
                for run in _adjacent_runs(part):
                    subst.update(_one_sum(run))
        else:
            total = sum(m.inputs[0].nbytes for m in members)
            if len(members) >= 2 and total <= SMALL_CONCAT_BYTES:
                subst.update(_one_stacked_sum(members))
    return substitute(graph, subst) if subst else graph


def _column_block(x: Node) -> tuple[int, int] | None:
    """(start, stop) when x is a block of whole rows' columns x = base[..., start:stop]."""
    ranges = basic_ranges(x)
    if ranges is None or x.ndim != x.inputs[0].ndim:
        return None
    base = x.inputs[0].shape
    if any(r != (0, d) for r, d in zip(ranges[:-1], base[:-1])):
        return None
    return ranges[-1]


def _adjacent_runs(part: list[Node]) -> list[list[Node]]:
    runs: list[list[Node]] = []
    for m in part:
        start, _ = _column_block(m.inputs[0])
        if runs and _column_block(runs[-1][-1].inputs[0])[1] == start:
            runs[-1].append(m)
        else:
            runs.append([m])
    return [r for r in runs if len(r) >= 2]


def _one_sum(members: list[Node]) -> dict[Node, Node]:
    first = members[0]
    x = first.inputs[0]
    block = make_concat(first, [m.inputs[0] for m in members], axis=x.ndim - 1)
    total = derive(first, "sum", (block,), axis=first.attrs["axis"], keepdims=False)
    out, start = {}, 0
    for m in members:
        width = m.inputs[0].shape[-1]
        out[m] = slice_axis(m, total, 0, start, start + width)
        start += width
    return out


def _one_stacked_sum(members: list[Node]) -> dict[Node, Node]:
    """Equal-width values: stacked along a new leading axis (each one a contiguous block the
    planner can compute it into, where a last-axis concat would be strided), summed over the
    rest; else the last-axis concat of `_one_sum`."""
    first = members[0]
    x = first.inputs[0]
    if any(m.inputs[0].shape != x.shape for m in members):
        return _one_sum(members)
    rows = [derive(m.inputs[0], "reshape", (m.inputs[0],), shape=(1, *x.shape)) for m in members]
    stack = make_concat(first, rows, axis=0)
    axes = tuple(range(1, x.ndim))
    block = derive(first, "sum", (stack,), axis=axes, keepdims=False)
    total = derive(first, "reshape", (block,), shape=(len(members) * x.shape[-1],))
    width = x.shape[-1]
    return {m: slice_axis(m, total, 0, k * width, (k + 1) * width) for k, m in enumerate(members)}
