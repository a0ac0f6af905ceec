"""What a buffer plan comes to, for the CompileReport (moved out of memory.py as it was): kernels
per call, naive / planned / peak bytes, bytes kept from forward for backward. Measurement only:
nothing here decides where a value lives."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .donate import tail_temp_bytes
from .graph import Graph
from .ops.registry import PSEUDO, get_op
from .passes.driver import PlanStats

if TYPE_CHECKING:
    from .memory import BufferPlan


def account(graph: Graph, plan: BufferPlan) -> None:
    computed = [n for n in graph.nodes if n.op not in PSEUDO]
    # a concat whose pieces are all computed into its slots runs no kernel
    placed_all = [
        c
        for c in plan.placed_concats
        if all((c, j) in plan.placed_slots for j in range(len(c.inputs)))
    ]
    alias = set(graph.meta.outputs_may_alias_inputs)
    plan.copied_bytes = sum(
        o.nbytes for k, o in enumerate(graph.outputs) if plan.copied(o, k in alias)
    )
    peak = peak_bytes(graph, plan)
    plan.stats = PlanStats(
        kernels=len(computed) - len(placed_all),
        naive_bytes=sum(n.nbytes for n in computed),
        planned_bytes=plan.buffer_bytes + plan.per_call_bytes,
        peak_bytes=peak,
        saved_for_backward_bytes=saved_bytes(graph),
    )


def peak_bytes(graph: Graph, plan: BufferPlan, loops: list | None = None) -> int:
    """Most bytes live at once during a call (`_peak`; at the end the copies of returned buffer
    values too), with what `loops` (LoopReports: the program's, once lowered) allocate for the
    length of their calls, NumPy's buffers of broadcasting ufunc calls (`ufunc_buffers`) and
    the temporaries of GEMMs over a donated loop's rows (`tail_buffers`)."""
    extra = [
        *loop_call_bytes(graph, loops or []),
        *ufunc_buffers(graph),
        *tail_buffers(graph, plan),
    ]
    peak = _peak(graph, plan, extra)
    if plan.copied_bytes:
        peak = max(peak, _live_at_end(graph, plan) + plan.copied_bytes)
    return peak


def loop_call_bytes(graph: Graph, loops: list, lent: dict | None = None) -> list[tuple[int, int]]:
    """(schedule index, bytes) of what each loop of `graph` allocates for the length of its call
    (LoopReport.call_bytes: its prologue's values, e.g. the packed weight panels); `lent`: scan
    node key -> bytes of those made in a weight's zeroed `.grad` instead (pack_scratch.py)."""
    lent = lent or {}
    per_node = {
        loop.node_key: loop.call_bytes - lent.get(loop.node_key, 0)
        for loop in loops
        if loop.call_bytes
    }
    if not per_node:
        return []
    return [
        (k, per_node[id(n.attrs)])
        for k, n in enumerate(graph.nodes)
        if n.op == "scan" and id(n.attrs) in per_node
    ]


def ufunc_buffers(graph: Graph) -> list[tuple[int, int]]:
    """(schedule index, bytes) of the iteration buffer NumPy allocates for the length of one
    ufunc call that broadcasts an operand (a bias row added to a (T*B, 4H) projection:
    min(size, np.getbufsize()) elements of the output's dtype, 32 KiB at float32; NumPy 2.4,
    measured): freed when the call returns, so it adds to the peak at that node only."""
    bufsize = np.getbufsize()
    out = []
    for k, n in enumerate(graph.nodes):
        if n.op in PSEUDO:
            continue
        op = get_op(n.op)
        if op.ufunc is None or not op.elementwise:  # (not matmul: a gufunc, no buffer)
            continue
        if any(tuple(i.shape) != tuple(n.shape) and math.prod(i.shape) > 1 for i in n.inputs):
            out.append((k, min(math.prod(n.shape), bufsize) * n.dtype.itemsize))
    return out


def tail_buffers(graph: Graph, plan: BufferPlan) -> list[tuple[int, int]]:
    """(schedule index, bytes) of the temporary each GEMM over a donated loop's dead rows makes
    for the length of its call (plan.tail_of; donate.tail_temp_bytes: 1/4 of an LSTM's input
    gradient, 400 KB at (32, 50, 256) float32)."""
    if not plan.tail_of:
        return []
    return [
        (k, tail_temp_bytes(n, plan.root)) for k, n in enumerate(graph.nodes) if n in plan.tail_of
    ]


def _peak(graph: Graph, plan: BufferPlan, extra: list[tuple[int, int]] = ()) -> int:
    """Most bytes of owned storage live at once (in-place and placed values share theirs), and
    `extra` (schedule index, bytes) live during one node."""
    delta = [0] * (len(graph.nodes) + 2)
    for st, start in plan.alloc_at.items():
        end = min(plan.release_at.get(st, start), len(graph.nodes))
        delta[start] += st.nbytes
        delta[end + 1] -= st.nbytes
    for k, nbytes in extra:
        delta[k] += nbytes
        delta[k + 1] -= nbytes
    live = peak = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def _live_at_end(graph: Graph, plan: BufferPlan) -> int:
    end = len(graph.nodes)
    return sum(st.nbytes for st, r in plan.release_at.items() if r >= end)


def saved_bytes(graph: Graph) -> int:
    """Bytes kept from forward for backward: the outputs meta names as saved, else forward
    values (not inputs) read by backward nodes."""
    saved = graph.meta.saved_outputs
    if saved is not None:
        return sum(graph.outputs[k].nbytes for k in saved)
    kept = {
        i
        for n in graph.nodes
        if n.phase == "backward"
        for i in n.inputs
        if i.phase == "forward" and i.op not in PSEUDO
    }
    return sum(n.nbytes for n in kept)
