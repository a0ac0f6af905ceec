"""Programs that never run at the same time (a TrainingPair's forward and backward; all the
programs of one module: `Arena`) compiled with their buffers in one shared byte arena
(optimisation tier: compiled alone, each program allocates its own)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .codegen import Program
from .donate import donatable, last_reads, tail_gemms
from .executor import (
    Compiled,
    compile,
    gc_paused,
    optimise,
    pipeline_of,
    verify_input,
    with_backend,
)
from .fused_lowering import fused_scratch
from .graph import Graph
from .keep import join
from .memory import DEFAULT_OPTIONS, PlanOptions, plan_buffers
from .ops.registry import PSEUDO
from .passes import Pass


class Arena:
    """One byte arena for the buffers of programs that never run at the same time (all the
    programs of one outermost module: every input signature, training and evaluation, the
    backward variants; a module's calls never overlap): safe because no value a program returns
    or keeps between calls lives in a buffer. `take(n)` returns it grown to at least n bytes (a
    program compiled before a growth keeps the smaller array it was given)."""

    def __init__(self) -> None:
        self.array = np.empty(0, np.uint8)
        self.given: list[np.ndarray] = []  # every array handed out (for the byte count)
        self.loops: dict[int, int] = {}  # compiled loop body -> its own buffers' bytes
        # whole-program numba kernels' workspaces, one per dtype for all the programs (like the
        # buffers: no value in them outlives a call); dtype -> most elements asked, arrays given
        self.work_need: dict[str, int] = {}
        self.work: dict[str, np.ndarray] = {}
        self.work_given: list[np.ndarray] = []
        self.keepers: list = []  # every program's keep.Keepers: one group (keep.join)

    def note_loops(self, compiled: Compiled) -> None:
        """Count the buffers of `compiled`'s loop bodies (each body once): they are the
        module's too, kept between calls beside the arena (a body runs inside its program)."""
        for loop in compiled.report.loops:
            self.loops[loop.body_key] = loop.buffer_bytes + loop.workspace_bytes
        # (and its numba kernel's workspaces: carved from the arena's, `take_work`)
        switch = getattr(compiled, "program_kernel", None)
        if switch is not None and getattr(switch, "handle", None) is not None:
            switch.pool = self
            for dtype, size in switch.handle.work:
                self.work_need[dtype] = max(self.work_need.get(dtype, 0), size)
            self.loops[id(compiled)] = 0
        else:
            self.loops[id(compiled)] = compiled.report.workspace_bytes

    def take_work(self, work: list[tuple[str, int]]) -> list[np.ndarray]:
        """A kernel's workspaces ((dtype, elements) each) as the front of the arena's, grown to
        what every kernel compiled so far asks when smaller (a kernel given a smaller one
        before keeps it)."""
        out = []
        for dtype, size in work:
            have, need = self.work.get(dtype), max(size, self.work_need.get(dtype, 0))
            if have is None or have.size < need:  # (as large as every kernel compiled asks)
                have = self.work[dtype] = np.empty(need, dtype)
                self.work_given.append(have)
            out.append(have[:size])
        return out

    def take(self, nbytes: int) -> np.ndarray:
        if self.array.nbytes < nbytes:
            self.array = np.empty(nbytes, np.uint8)
            self.given.append(self.array)
        return self.array

    @property
    def nbytes(self) -> int:
        """Bytes of every array handed out (the programs keep them alive), and of the loop
        bodies' own buffers."""
        work = sum(a.nbytes for a in self.work_given) + sum(
            np.dtype(d).itemsize * max(0, n - (self.work[d].size if d in self.work else 0))
            for d, n in self.work_need.items()
        )  # (made at a kernel's first call: counted from its compile on)
        return sum(a.nbytes for a in self.given) + sum(self.loops.values()) + work


def compile_shared(
    graphs: Sequence[Graph],
    passes: Sequence[Pass] | None = None,
    options: PlanOptions = DEFAULT_OPTIONS,
    backend: str | None = None,
    arena: Arena | None = None,
    n_saved: int = 0,
    donate: dict[int, int] | None = None,
) -> list[Compiled]:
    """Compile graphs whose programs never run at the same time (a TrainingPair's forward and
    backward run one after the other) with their buffers in one arena, as large as the largest
    program's buffers. Every report's `resident_bytes` is then the group's total: the arena once
    plus every program's per-call values (returned values, values saved for backward, copies of
    returned views of inputs). With `arena` the group's arena is that shared Arena's (grown
    if it is too small), and the reports count all of it. `n_saved` (a TrainingPair: the
    forward's last n_saved outputs are the backward's first inputs): with
    options.dz_in_gates the backward (the last graph) may write a loop's result over a saved
    value's leading elements that no other forward output reads (donate.py). `donate` (one
    graph: a pair's backward variant, the pair's inputs): donate.donatable's answer, given."""
    options = with_backend(options, backend)
    with gc_paused():
        optimised = []
        for graph in graphs:
            verify_input(graph)
            optimised.append(optimise(graph, pipeline_of(passes), options))
        pair = n_saved and len(optimised) == 2
        plans = [
            plan_buffers(
                g,
                scratch=fused_scratch,
                options=options,
                per_call=per_call(g) if pair and k == 0 else frozenset(),
            )
            for k, (g, _) in enumerate(optimised)
        ]
        if options.dz_in_gates and n_saved and len(optimised) == 2:
            donate = donatable(optimised[0][0], plans[0], n_saved)
        if options.dz_in_gates and donate:
            plans[-1] = plan_buffers(
                optimised[-1][0], scratch=fused_scratch, options=options, donate=donate
            )
            if pair:  # (the input gradient over the dead tail of the dZ rows: donate.tail_gemms)
                untailed = optimised[-1], plans[-1]
                optimised[-1], plans[-1] = _tails(optimised, plans, n_saved, donate, options)
        tailed = pair and options.dz_in_gates and bool(donate) and bool(plans[-1].tail_of)
        size = max(arena_layout(p.buffers)[1] for p in plans + ([untailed[1]] if tailed else []))
        shared = np.empty(size, np.uint8) if arena is None else arena.take(size)
        compiled: list[Compiled] = []
        for k in range(len(optimised)):
            if tailed and k == len(optimised) - 1 and compiled[0].program_kernel is not None:
                # a whole-program kernel keeps the saved values in its own workspace, reused by
                # the next call (not the kept outputs' arrays): the input gradient may not lie
                # there, so the backward is compiled from its plan without the tail GEMMs
                optimised[-1], plans[-1] = untailed
            (g, report), plan = optimised[k], plans[k]
            program = Program(
                g, buffers=arena_views(shared, plan.buffers), plan=plan, options=options
            )
            compiled.append(Compiled(g, program, report))
        if arena is not None:
            for c in compiled:
                arena.note_loops(c)
                join(arena.keepers, c.program.keepers)  # (one group a module: keep.join)
        arena_bytes = shared.nbytes if arena is None else arena.nbytes
        resident = arena_bytes + sum(p.per_call_bytes for p in plans)
        if arena is None:  # (an Arena counts the kernels' workspaces itself: note_loops)
            resident += sum(c.report.workspace_bytes for c in compiled)
        for c in compiled:
            c.report.resident_bytes = resident
            c.report.arena_bytes = arena_bytes
        return compiled


def _tails(optimised: list, plans: list, n_saved: int, donate: dict, options: PlanOptions):
    """(graph, report), plan of a pair's backward with its returned GEMMs computed over the
    dead tail of a donated loop's rows (donate.tail_gemms), scheduled after the other reads
    of those rows (donate.last_reads); unchanged when there are none. Only into saved values
    a kept forward output holds anyway (a rolled loop's slab, held by `output`)."""
    (fwd, _), (bwd, report) = optimised
    outs, plan = fwd.outputs, plans[0]
    n_kept = len(outs) - n_saved
    kept = {plan.storage.get(o) for o in outs[:n_kept] if o.op not in PSEUDO}
    keep = frozenset(j for j in range(n_saved) if outs[n_kept + j] in kept)
    found = tail_gemms(
        bwd, plans[-1].root, plans[-1].donated, keep, options.grad_input_tail_min_bytes
    )
    if not found:
        return optimised[-1], plans[-1]
    moved = last_reads(bwd, found)
    new = plan_buffers(moved, scratch=fused_scratch, options=options, donate=donate, tails=found)
    if not new.tail_of:
        return optimised[-1], plans[-1]
    return (moved, report), new


def per_call(forward: Graph) -> frozenset:
    """A TrainingPair forward's values allocated per call instead of in the shared arena: the
    contiguous copies of loop weights (passes/loop_operands.py), dead once the loop has run.
    In the arena they are held through backward and after it, beside the kept outputs, and
    they set its size (the backward's own buffers are smaller); per call they are gone by
    then, at the cost of one allocation per forward (issue 19)."""
    return frozenset(n for n in forward.nodes if n.op == "transpose_copy")


def compile_into(
    graph: Graph,
    arena: Arena | None,
    passes: Sequence[Pass] | None = None,
    options: PlanOptions = DEFAULT_OPTIONS,
    donate: dict[int, int] | None = None,
) -> Compiled:
    """`executor.compile(graph, passes, options)` with the buffers carved from `arena` (None:
    the program's own); `donate`: inputs its loops may be computed into (compile_shared)."""
    if arena is None and not donate:
        return compile(graph, passes, options)
    return compile_shared([graph], passes, options, arena=arena, donate=donate)[0]


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
    return [
        arena[o : o + size * dtype.itemsize].view(dtype)
        for o, (size, dtype) in zip(offsets, buffers)
    ]
