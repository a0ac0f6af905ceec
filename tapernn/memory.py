"""Memory planning over the tape schedule: storage roots (views alias their base), liveness,
a buffer plan (reuse of dead buffers of equal size and dtype, in-place where an op allows), and
byte accounting. Analyses only: they return a `BufferPlan`, never a graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .graph import Graph, Node
from .ops.registry import get_op

PSEUDO = ("input", "constant")
Scratch = Callable[[Node], list[tuple[tuple[int, ...], np.dtype]]]


@dataclass
class BufferPlan:
    """Where every computed value lives.

    `buffers[b]` is (element count, dtype) of preallocated buffer b; `buffer_of[n]` the buffer a
    planned value is written into (by `out=`); `scratch_of[n]` the buffers of a node's
    temporaries; values in `fresh` are allocated by their op on every call (graph outputs, so
    callers own them, and ops without `out=`); views own nothing and keep their base alive.
    """

    schedule: list[Node]
    root: dict[Node, Node]
    last_use: dict[Node, int]
    buffers: list[tuple[int, np.dtype]] = field(default_factory=list)
    buffer_of: dict[Node, int] = field(default_factory=dict)
    scratch_of: dict[Node, list[int]] = field(default_factory=dict)
    inplace: dict[Node, Node] = field(default_factory=dict)  # node -> input it overwrites
    fresh: set[Node] = field(default_factory=set)
    naive_bytes: int = 0
    planned_bytes: int = 0
    peak_bytes: int = 0
    saved_for_backward_bytes: int = 0
    kernels: int = 0


def storage_roots(graph: Graph) -> dict[Node, Node]:
    """Each node's storage: itself, or (for view ops) the storage of its first input."""
    root: dict[Node, Node] = {}
    for n in graph.nodes:
        view = n.op not in PSEUDO and get_op(n.op).view
        root[n] = root[n.inputs[0]] if view else n
    return root


def liveness(graph: Graph, root: dict[Node, Node]) -> dict[Node, int]:
    """Schedule index of the last read of each storage (outputs: one past the end)."""
    last: dict[Node, int] = {}
    for k, n in enumerate(graph.nodes):
        last.setdefault(root[n], k)
        for i in n.inputs:
            last[root[i]] = k
    for o in graph.outputs:
        last[root[o]] = len(graph.nodes)
    return last


def inplace_candidates(n: Node) -> tuple[int, ...]:
    op = get_op(n.op)
    rule = op.extra.get("inplace_rule")
    return tuple(rule(n)) if rule is not None else op.inplace


def plan_buffers(graph: Graph, scratch: Scratch | None = None) -> BufferPlan:
    """Assign buffers in one walk over the tape (linear time; pools keyed by size and dtype)."""
    root = storage_roots(graph)
    plan = BufferPlan(list(graph.nodes), root, liveness(graph, root))
    escaping = {root[o] for o in graph.outputs}
    pool: dict[tuple[int, str], list[int]] = {}
    for k, n in enumerate(graph.nodes):
        if n.op in PSEUDO or root[n] is not n:
            continue
        if n in escaping or not get_op(n.op).supports_out:
            plan.fresh.add(n)
        else:
            _assign(plan, n, k, pool)
        temps = [_take(plan, pool, math.prod(s), np.dtype(d))
                 for s, d in (scratch(n) if scratch else [])]
        if temps:
            plan.scratch_of[n] = temps
        for b in temps:
            _give(plan, pool, b)
        # dedup by storage: concat(b[0], b[1], ...) reads one buffer through several views,
        # and freeing it once per view put it in the pool twice (two live values, one buffer)
        for r in dict.fromkeys(root[i] for i in n.inputs):
            if plan.last_use.get(r) == k and r in plan.buffer_of and plan.inplace.get(n) is not r:
                _give(plan, pool, plan.buffer_of[r])
        if plan.last_use.get(n) == k and n in plan.buffer_of:  # never read: free at once
            _give(plan, pool, plan.buffer_of[n])
    _account(graph, plan)
    return plan


def _assign(plan: BufferPlan, n: Node, k: int, pool: dict) -> None:
    for pos in inplace_candidates(n):
        i = n.inputs[pos]
        if (i in plan.buffer_of and plan.root[i] is i and plan.last_use.get(i) == k
                and i.shape == n.shape and i.dtype == n.dtype and n.inputs.count(i) == 1
                and all(plan.root[j] is not i for j in n.inputs if j is not i)):
            plan.buffer_of[n] = plan.buffer_of[i]
            plan.inplace[n] = i
            return
    plan.buffer_of[n] = _take(plan, pool, n.size, n.dtype)


def _take(plan: BufferPlan, pool: dict, size: int, dtype: np.dtype) -> int:
    free = pool.get((size, dtype.str))
    if free:
        return free.pop()
    plan.buffers.append((size, dtype))
    return len(plan.buffers) - 1


def _give(plan: BufferPlan, pool: dict, b: int) -> None:
    size, dtype = plan.buffers[b]
    pool.setdefault((size, dtype.str), []).append(b)


def _account(graph: Graph, plan: BufferPlan) -> None:
    computed = [n for n in graph.nodes if n.op not in PSEUDO]
    plan.kernels = len(computed)
    plan.naive_bytes = sum(n.nbytes for n in computed)
    plan.planned_bytes = (sum(s * d.itemsize for s, d in plan.buffers)
                          + sum(n.nbytes for n in plan.fresh))
    plan.peak_bytes = _peak(graph, plan)
    plan.saved_for_backward_bytes = saved_bytes(graph)


def _peak(graph: Graph, plan: BufferPlan) -> int:
    """Most bytes of owned storage live at once (an in-place result shares its input's)."""
    delta = [0] * (len(graph.nodes) + 2)
    overwritten_by = {v: k for k, v in plan.inplace.items()}
    for k, n in enumerate(graph.nodes):
        if n.op in PSEUDO or plan.root[n] is not n or n in plan.inplace:
            continue
        end = plan.last_use.get(n, k)
        m = n
        while m in overwritten_by:  # the storage lives as long as its last overwriter
            m = overwritten_by[m]
            end = max(end, plan.last_use.get(m, k))
        delta[k] += n.nbytes
        delta[min(end, len(graph.nodes)) + 1] -= n.nbytes
    live = peak = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def saved_bytes(graph: Graph) -> int:
    """Bytes kept from forward for backward: the outputs meta names as saved, else forward
    values (not inputs) read by backward nodes."""
    saved = graph.meta.get("saved_outputs")
    if saved is not None:
        return sum(graph.outputs[k].nbytes for k in saved)
    kept = {i for n in graph.nodes if n.phase == "backward" for i in n.inputs
            if i.phase == "forward" and i.op not in PSEUDO}
    return sum(n.nbytes for n in kept)
