"""The pass driver: runs a list of `Graph -> Graph` passes, verifies after each one (naming the
pass that broke the graph), times them and records what each did in a `CompileReport`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .. import views
from ..errors import GraphError, TapernnError
from ..graph import Graph

Pass = Callable[[Graph], Graph]


@dataclass
class PassRecord:
    name: str
    nodes_before: int
    nodes_after: int
    milliseconds: float
    program: str = ""  # "forward" / "backward" when a report joins a training pair's two


@dataclass(frozen=True)
class PlanStats:
    """What a buffer plan comes to (memory.BufferPlan.stats; CompileReport.plan): kernels run per
    call; bytes if every value had a buffer of its own (naive), after reuse (planned: the
    preallocated buffers plus what each call allocates), most bytes live at once (peak), and
    bytes kept from forward for backward."""

    kernels: int = 0
    naive_bytes: int = 0
    planned_bytes: int = 0
    peak_bytes: int = 0
    saved_for_backward_bytes: int = 0


@dataclass
class LoopReport:
    """A compiled loop (a `scan` node): its body's own CompileReport (passes, kernels, bytes of
    one step's program, reused every step) and the bytes of its slab as a function of the
    length T: `bytes_per_sequence(T) = fixed_bytes + T * step_bytes`, where `step_bytes` is one
    row of ys (the values written per step, the residuals backward reads among them) and
    `fixed_bytes` the final carries plus the body program's buffers."""

    scope: str
    length: int
    reverse: bool
    body: CompileReport
    body_nodes: int
    carry_bytes: int
    step_bytes: int
    largest_gemm_flops: float = 0.0  # the body's (the BLAS thread choice of the outer program)
    buffer_bytes: int = 0  # the body program's own buffers (kept between calls, one per body)
    body_key: int = 0  # which compiled body (one body serves every loop over it: count once)
    kernel: str = ""  # what runs the steps: the Python loop, or a numba loop kernel (and why)
    # a numba loop kernel's workspaces (its buffers, made once by its runner; 0 when a
    # whole-program kernel calls it: then they are slices of that kernel's, counted there)
    workspace_bytes: int = 0
    # allocated at every loop call and freed when it returns: the values the body's prologue
    # computes from the invariants alone (scan_hoist: the packed weight panels, a fused gate
    # weight), live over the whole loop; `node_key` = id of the scan node's attrs (which node)
    call_bytes: int = 0
    node_key: int = 0

    @property
    def fixed_bytes(self) -> int:
        return self.carry_bytes + self.body.resident_bytes + self.workspace_bytes

    def bytes_per_sequence(self, length: int | None = None) -> int:
        return self.fixed_bytes + (self.length if length is None else length) * self.step_bytes

    def __str__(self) -> str:
        kind = "reverse loop" if self.reverse else "loop"
        return (
            f"{kind} {self.scope or '(top)'}: T = {self.length}, body {self.body_nodes} "
            f"nodes, {self.body.kernels} kernels per step; bytes {self.fixed_bytes:,} + "
            f"T x {self.step_bytes:,} per step = {self.bytes_per_sequence():,}"
            + (f"; {self.kernel}" if self.kernel else "")
        )


@dataclass
class CompileReport:
    """What compilation did: per pass `(name, nodes_before, nodes_after, milliseconds)`, fused
    groups, bytes (naive = every value its own buffer; planned = after reuse: the program's
    preallocated buffers plus what it allocates per call; peak = most bytes live at once),
    bytes kept from forward for backward, and kernels executed per call.

    `resident_bytes`: what the program holds between calls plus what it hands out per call.
    Alone that is `planned_bytes`; for programs compiled together by `arena.compile_shared` (a
    TrainingPair's forward and backward, which run alternately) it is their joint total: the
    shared buffer arena once (`arena_bytes`, as large as the larger program's buffers; 0 for a
    program with buffers of its own) plus each program's per-call values (outputs, values saved
    for backward, gradients), so the forward and backward reports carry the same number and it
    must not be added up. A module's report after a training step (`compile_report()`) joins
    its two programs: there `peak_bytes` is the most bytes a steady training loop holds at once
    beyond the parameters, their gradients and the caller's data (TrainingPair.step_peak_bytes:
    what tracemalloc shows), `resident_bytes` the pair's."""

    passes: list[PassRecord] = field(default_factory=list)
    fused_groups: list[list[str]] = field(default_factory=list)
    plan: PlanStats = field(default_factory=PlanStats)  # the bytes and kernels of the plan
    resident_bytes: int = 0
    arena_bytes: int = 0
    backend: str = ""  # "numpy" / "numba": how the fused groups were lowered
    # the "auto" backend's choice: when numba runs, or why NumPy does (backends.backend_note)
    backend_note: str = ""
    compiled_kernels: int = 0  # distinct numba kernels the program calls
    fallbacks: list[str] = field(default_factory=list)  # groups numba left to NumPy, and why
    loops: list[LoopReport] = field(default_factory=list)  # compiled scan bodies
    # numba: what runs the program -- a whole-program kernel, or the NumPy program (and why)
    kernel: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. which loops run unrolled, and why
    # PlanOptions.own_threads: whether the program's calls own both cores, and when (own_threads)
    threads: str = ""
    # numba: the whole-program kernel's workspaces (its buffers and its loop kernels', made once
    # per program and reused by every call), included in resident_bytes
    workspace_bytes: int = 0

    kernels = property(lambda self: self.plan.kernels)

    @property
    def loop_compiled_kernels(self) -> int:
        """numba kernels of the loop bodies (each compiled body counted once, nested loops
        included): a rolled Sequencer's elementwise kernels are all there."""
        seen: dict[int, int] = {}
        for loop in self.loops:
            body = loop.body
            seen[loop.body_key or id(body)] = body.compiled_kernels + body.loop_compiled_kernels
        return sum(seen.values())

    naive_bytes = property(lambda self: self.plan.naive_bytes)
    planned_bytes = property(lambda self: self.plan.planned_bytes)
    peak_bytes = property(lambda self: self.plan.peak_bytes)
    saved_for_backward_bytes = property(lambda self: self.plan.saved_for_backward_bytes)

    @classmethod
    def joined(
        cls,
        fwd: CompileReport,
        bwd: CompileReport,
        saved_for_backward_bytes: int,
        resident_bytes: int,
        peak_bytes: int | None = None,
    ) -> CompileReport:
        """One report of a training pair's forward and backward programs (compiled together:
        one arena, one backend): passes labelled by program, bytes and kernels added up, the
        peak `peak_bytes` (a module's: its training loop's) or else the larger program's."""
        labelled = [
            replace(r, program=program)
            for program, rep in (("forward", fwd), ("backward", bwd))
            for r in rep.passes
        ]
        a, b = fwd.plan, bwd.plan
        plan = PlanStats(
            a.kernels + b.kernels,
            a.naive_bytes + b.naive_bytes,
            a.planned_bytes + b.planned_bytes,
            max(a.peak_bytes, b.peak_bytes) if peak_bytes is None else peak_bytes,
            saved_for_backward_bytes,
        )
        return cls(
            passes=labelled,
            fused_groups=fwd.fused_groups + bwd.fused_groups,
            plan=plan,
            resident_bytes=resident_bytes,
            arena_bytes=fwd.arena_bytes,
            backend=fwd.backend,
            backend_note=fwd.backend_note,
            compiled_kernels=fwd.compiled_kernels + bwd.compiled_kernels,
            workspace_bytes=fwd.workspace_bytes + bwd.workspace_bytes,
            fallbacks=_with_packed_failures(fwd.fallbacks + bwd.fallbacks, fwd.loops + bwd.loops),
            loops=fwd.loops + bwd.loops,
            kernel="; ".join(
                f"{name}: {r.kernel}"
                for name, r in (("forward", fwd), ("backward", bwd))
                if r.kernel
            ),
            threads=fwd.threads
            if fwd.threads == bwd.threads
            else "; ".join(
                f"{name}: {r.threads}"
                for name, r in (("forward", fwd), ("backward", bwd))
                if r.threads
            ),
        )

    def __str__(self) -> str:
        return views.format_report(self)


PACKED_FAILED = "packed GEMM:"  # = backends.packed.FAILED (the passes do not import backends)


def _with_packed_failures(fallbacks: list[str], loops: list[LoopReport]) -> list[str]:
    """`fallbacks` plus the lines of loop bodies saying their packed GEMM kernel failed (the step
    programs' reports get them at run time: backends/packed.py), each once."""
    out = list(fallbacks)
    for loop in loops:
        for why in loop.body.fallbacks:
            if why.startswith(PACKED_FAILED) and why not in out:
                out.append(why)
    return out


def pass_name(p: Pass) -> str:
    return getattr(p, "__name__", type(p).__name__)


def must_follow(*names: str) -> Callable[[Pass], Pass]:
    """Declare that a pass must run after the passes named (when a list holds them at all): the
    driver refuses a list that puts one of them later (`check_order`)."""

    def mark(p: Pass) -> Pass:
        p.must_follow = tuple(names)
        return p

    return mark


def until_stable(*passes: Pass, max_rounds: int = 8) -> Pass:
    """One pipeline entry running `passes` in turn, again and again, until a round changes
    nothing (every pass returned its input graph) or `max_rounds` rounds have run."""

    def run(graph: Graph) -> Graph:
        for _ in range(max_rounds):
            before = graph
            for p in passes:
                graph = p(graph)
            if graph is before:
                break
        return graph

    run.__name__ = f"until_stable({', '.join(pass_name(p) for p in passes)})"
    run.members = tuple(pass_name(p) for p in passes)
    run.must_follow = tuple(
        n for p in passes for n in getattr(p, "must_follow", ()) if n not in run.members
    )
    return run


def check_order(passes: Sequence[Pass]) -> None:
    """Raise GraphError when a pass runs before a pass it `must_follow`."""
    names = [pass_name(p) for p in passes]
    for k, p in enumerate(passes):
        for name in getattr(p, "must_follow", ()):
            later = [j for j, other in enumerate(passes) if j > k and _runs(other, name)]
            if later:
                raise GraphError(
                    f"pass {names[k]!r} (position {k}) must follow {name!r}, "
                    f"which runs later (position {later[0]}); pipeline: {names}"
                )


def _runs(p: Pass, name: str) -> bool:
    return pass_name(p) == name or name in getattr(p, "members", ())


Dump = Callable[[int, str, Graph], None]


def run_passes(
    graph: Graph,
    passes: Sequence[Pass],
    report: CompileReport | None = None,
    dump: Dump | str | os.PathLike | None = None,
) -> tuple[Graph, CompileReport]:
    """Run `passes` in order, verifying the graph after each; `dump` sees the graph before the
    first pass (index 0, "input") and after each pass k (index k + 1, its name): a function
    `dump(index, name, graph)`, or a directory where each is written as `NN_name.txt`."""
    check_order(passes)
    report = report or CompileReport()
    dump = dump if dump is None or callable(dump) else views.graph_files(dump)
    names = [pass_name(p) for p in passes]
    if dump is not None:
        dump(0, "input", graph)
    for k, p in enumerate(passes):
        before = len(graph.nodes)
        start = time.perf_counter()
        try:
            result = p(graph)
            if not isinstance(result, Graph):
                raise GraphError(f"returned {type(result).__name__}, not a Graph")
            if result is not graph:  # an unchanged graph needs no second check
                result.verify()
        except Exception as e:  # any failure is reported with the pipeline
            cls = type(e) if isinstance(e, TapernnError) else GraphError
            raise cls(
                f"pass {names[k]!r} (position {k}, after {names[:k] or 'no pass'}) "
                f"failed: {type(e).__name__}: {e}"
            ) from e
        elapsed = (time.perf_counter() - start) * 1e3
        report.passes.append(PassRecord(names[k], before, len(result.nodes), elapsed))
        graph = result
        if dump is not None:
            dump(k + 1, names[k], graph)
    return graph, report
