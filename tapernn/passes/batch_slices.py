"""Horizontal batching of sliced elementwise work: the same elementwise op applied to adjacent
column blocks of the same values (the four gate pre-activations x@W[:, k] + h@U[:, k] + b_k
after gate fusion) becomes one op on the whole block, then slices -- one call instead of four.
Loop-level vectors in the blocks (biases b_k) are concatenated once."""

from __future__ import annotations

import itertools

from ..graph import Graph, Node
from ..ops.registry import get_op
from .concat import basic_ranges, make_concat, slice_axis
from .rewrite import PSEUDO, derive, invariant_nodes, spanning, substitute


def _operand_key(i: Node, n: Node, inv: set[Node]) -> tuple | None:
    """('s', base, row range) for a 2-D block of a base, ('v',) for a loop-level row vector."""
    if i.ndim == 1 and i in inv and i.shape == n.shape[-1:]:
        return ("v",)
    ranges = basic_ranges(i)
    if ranges is None or i.ndim != 2 or i.shape != n.shape or i.inputs[0].ndim != 2:
        return None
    return ("s", i.inputs[0], ranges[0])


def _columns(n: Node) -> list[tuple[int, int] | None]:
    return [basic_ranges(i)[1] if i.op == "getitem" and i.ndim == 2 else None for i in n.inputs]


def batch_sliced_elementwise(graph: Graph) -> Graph:
    inv: set[Node] | None = None
    groups: dict[tuple, list[Node]] = {}
    for n in graph.nodes:
        if len(n.shape) != 2 or n.op in PSEUDO or not get_op(n.op).batchable:
            continue
        for i in n.inputs:  # a block operand is a slice: without one, no key has an "s"
            if i.op == "getitem":
                break
        else:
            continue
        if inv is None:
            inv = invariant_nodes(graph)
        keys = [_operand_key(i, n, inv) for i in n.inputs]
        if any(k is None for k in keys) or not any(k[0] == "s" for k in keys):
            continue
        key = (n.op, n.attrs_key, n.step, n.phase, tuple(keys))
        groups.setdefault(key, []).append(n)
    subst: dict[Node, Node] = {}
    for members in groups.values():
        for run in _adjacent_runs(members):
            subst.update(_batch(run))
    return substitute(graph, subst)


def _adjacent_runs(members: list[Node]) -> list[list[Node]]:
    """Maximal runs whose column blocks follow each other in every sliced operand."""
    members = sorted(members, key=lambda m: next(c for c in _columns(m) if c is not None))
    runs, run = [], [members[0]]
    for prev, cur in itertools.pairwise(members):
        a, b = _columns(prev), _columns(cur)
        follows = all(
            (x is None) == (y is None) and (x is None or x[1] == y[0]) for x, y in zip(a, b)
        )
        if follows:
            run.append(cur)
        else:
            runs.append(run)
            run = [cur]
    runs.append(run)
    return [r for r in runs if len(r) >= 2]


def _batch(run: list[Node]) -> dict[Node, Node]:
    first, last = run[0], run[-1]
    operands = []
    for j, i in enumerate(first.inputs):
        if i.ndim == 1:  # loop-level vectors: one concat, shared by every step after CSE
            operands.append(make_concat(spanning(first), [m.inputs[j] for m in run], axis=0))
        else:
            start, stop = _columns(first)[j][0], _columns(last)[j][1]
            operands.append(_widen(first, i, start, stop))
    whole = derive(first, first.op, operands, **first.attrs)
    out, offset = {}, 0
    for m in run:
        width = m.shape[1]
        out[m] = slice_axis(m, whole, 1, offset, offset + width)
        offset += width
    return out


def _widen(like: Node, block: Node, start: int, stop: int) -> Node:
    """The same rows as `block` (a slice of its base), columns start:stop of the base."""
    base = block.inputs[0]
    rows = basic_ranges(block)[0]
    tall = slice_axis(like, base, 0, *rows) if rows != (0, base.shape[0]) else base
    return slice_axis(like, tall, 1, start, stop)
