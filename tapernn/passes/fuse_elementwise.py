"""Elementwise fusion: convex groups of elementwise nodes inside one step (a root and the
producers only it reads, transitively) become one `fused` node whose program the executor runs
with preallocated temporaries and `out=` ufunc calls. Linear: one reverse sweep with a heap."""

from __future__ import annotations

import heapq

from ..graph import Graph, Node
from ..ops.registry import get_op
from .rewrite import PSEUDO, substitute

MAX_GROUP = 64


def _fusible(n: Node) -> bool:
    return n.op not in PSEUDO and get_op(n.op).fusible


def fuse_elementwise(graph: Graph) -> Graph:
    users = graph.users()
    pos = {n: k for k, n in enumerate(graph.nodes)}
    outputs = set(graph.outputs)
    taken: set[Node] = set()
    subst: dict[Node, Node] = {}
    for root in reversed(graph.nodes):
        if root in taken or not _fusible(root):
            continue
        group = _grow(root, users, pos, outputs, taken)
        if len(group) >= 2:
            taken.update(group)
            subst[root] = fused_node(sorted(group, key=pos.__getitem__))
    return substitute(graph, subst)


def _grow(root: Node, users: dict, pos: dict, outputs: set, taken: set) -> set[Node]:
    """Absorb producers in reverse tape order, so each one's in-group readers are known."""
    group = {root}
    heap = [(-pos[i], pos[i], i) for i in dict.fromkeys(root.inputs)]
    heapq.heapify(heap)
    seen = set()
    while heap and len(group) < MAX_GROUP:
        _, _, p = heapq.heappop(heap)
        if p in seen:
            continue
        seen.add(p)
        if (
            not _fusible(p)
            or p in taken
            or p in outputs
            or p.step != root.step
            or p.phase != root.phase
            or not group.issuperset(users[p])
        ):
            continue
        group.add(p)
        for i in dict.fromkeys(p.inputs):
            if i not in seen:
                heapq.heappush(heap, (-pos[i], pos[i], i))
    return group


def fused_node(members: list[Node]) -> Node:
    """One node running `members` (in tape order; the last is the group's result)."""
    index = {m: j for j, m in enumerate(members)}
    inputs: list[Node] = []
    slot: dict[Node, int] = {}
    program = []
    for m in members:
        refs = []
        for i in m.inputs:
            if i in index:
                refs.append(-index[i] - 1)
            else:
                if i not in slot:
                    slot[i] = len(inputs)
                    inputs.append(i)
                refs.append(slot[i])
        program.append((m.op, tuple(refs), m.attrs_key, m.shape, m.dtype.str))
    root = members[-1]
    return Node(
        "fused",
        inputs,
        {"program": tuple(program)},
        root.shape,
        root.dtype,
        step=root.step,
        scope=root.scope,
        phase=root.phase,
    )
