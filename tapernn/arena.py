"""Programs that never run at the same time (a TrainingPair's forward and backward) compiled with
their buffers in one shared byte arena (optimisation tier: compiled alone, each program
allocates its own)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .codegen import Program
from .executor import Compiled, gc_paused, pipeline_of, verify_input, with_backend
from .fused_lowering import fused_scratch
from .graph import Graph
from .memory import DEFAULT_OPTIONS, PlanOptions, plan_buffers
from .passes import Pass, run_passes


def compile_shared(graphs: Sequence[Graph], passes: Sequence[Pass] | None = None,
                   options: PlanOptions = DEFAULT_OPTIONS,
                   backend: str | None = None) -> list[Compiled]:
    """Compile graphs whose programs never run at the same time (a TrainingPair's forward and
    backward run one after the other) with their buffers in one arena, as large as the largest
    program's buffers. Every report's `resident_bytes` is then the group's total: the arena once
    plus every program's per-call values (returned values, values saved for backward, copies of
    returned views of inputs)."""
    options = with_backend(options, backend)
    with gc_paused():
        optimised = []
        for graph in graphs:
            verify_input(graph)
            optimised.append(run_passes(graph, pipeline_of(passes)))
        plans = [plan_buffers(g, scratch=fused_scratch, options=options) for g, _ in optimised]
        arena = np.empty(max(arena_layout(p.buffers)[1] for p in plans), np.uint8)
        compiled = [Compiled(g, Program(g, buffers=arena_views(arena, plan.buffers), plan=plan,
                                       options=options), report)
                    for (g, report), plan in zip(optimised, plans)]
        resident = arena.nbytes + sum(p.per_call_bytes for p in plans)
        for c in compiled:
            c.report.resident_bytes = resident
            c.report.arena_bytes = arena.nbytes
        return compiled


def arena_layout(buffers: list[tuple[int, np.dtype]]) -> tuple[list[int], int]:
    """Byte offsets (64-aligned) of `buffers` laid out one after another, and the total."""
    offsets, total = [], 0
    for size, dtype in buffers:
        total = -(-total // 64) * 64
        offsets.append(total)
        total += size * dtype.itemsize
    return offsets, total


def arena_views(arena: np.ndarray, buffers: list[tuple[int, np.dtype]]) -> list[np.ndarray]:
    """A program's buffers carved from a shared byte arena: programs that never run at the same
    time (a TrainingPair's forward and backward) keep one set of temporaries between them. Safe
    because no value a program returns or keeps between calls lives in a buffer."""
    offsets, total = arena_layout(buffers)
    if arena.nbytes < total:
        raise ValueError(f"arena of {arena.nbytes} bytes, the program needs {total}")
    return [arena[o: o + size * dtype.itemsize].view(dtype) for o, (size, dtype) in
            zip(offsets, buffers)]
