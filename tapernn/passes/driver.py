"""The pass driver: runs a list of `Graph -> Graph` passes, verifies after each one (naming the
pass that broke the graph), times them and records what each did in a `CompileReport`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import GraphError
from ..graph import Graph

Pass = Callable[[Graph], Graph]


@dataclass
class PassRecord:
    name: str
    nodes_before: int
    nodes_after: int
    milliseconds: float
    program: str = ""  # "forward" / "backward" when a report joins a training pair's two


@dataclass
class CompileReport:
    """What compilation did: per pass `(name, nodes_before, nodes_after, milliseconds)`, fused
    groups, bytes (naive = every value its own buffer; planned = after reuse: the program's
    preallocated buffers plus what it allocates per call; peak = most bytes live at once),
    bytes kept from forward for backward, and kernels executed per call.

    `resident_bytes`: what the program holds between calls plus what it hands out per call.
    Alone that is `planned_bytes`; for programs compiled together with `compile_shared` (a
    TrainingPair's forward and backward, which run alternately) it is their joint total: the
    shared buffer arena once (`arena_bytes`, as large as the larger program's buffers; 0 for a
    program with buffers of its own) plus each program's per-call values (outputs, values saved
    for backward, gradients), so the forward and backward reports carry the same number and it
    must not be added up."""

    passes: list[PassRecord] = field(default_factory=list)
    fused_groups: list[list[str]] = field(default_factory=list)
    naive_bytes: int = 0
    planned_bytes: int = 0
    peak_bytes: int = 0
    saved_for_backward_bytes: int = 0
    kernels: int = 0
    resident_bytes: int = 0
    arena_bytes: int = 0

    def __str__(self) -> str:
        width = max([len(p.name) for p in self.passes] + [28]) + 2
        labelled = any(p.program for p in self.passes)
        lead = f"{'program':<10}" if labelled else ""
        rows = [f"{lead}{'pass':<{width}}{'nodes before':>13}{'nodes after':>13}{'ms':>10}"]
        for p in self.passes:
            lead = f"{p.program:<10}" if labelled else ""
            rows.append(f"{lead}{p.name:<{width}}{p.nodes_before:>13}{p.nodes_after:>13}"
                        f"{p.milliseconds:>10.2f}")
        rows.append("")
        rows.append(f"fused groups              {len(self.fused_groups)}")
        rows.append(f"kernels per call          {self.kernels}")
        rows.append(f"naive bytes               {self.naive_bytes:,}")
        rows.append(f"planned bytes             {self.planned_bytes:,}")
        rows.append(f"peak bytes                {self.peak_bytes:,}")
        rows.append(f"saved for backward bytes  {self.saved_for_backward_bytes:,}")
        rows.append(f"resident bytes            {self.resident_bytes:,}")
        return "\n".join(rows)


def pass_name(p: Pass) -> str:
    return getattr(p, "__name__", type(p).__name__)


def run_passes(graph: Graph, passes: Sequence[Pass], report: CompileReport | None = None
               ) -> tuple[Graph, CompileReport]:
    report = report or CompileReport()
    for p in passes:
        name = pass_name(p)
        before = len(graph.nodes)
        start = time.perf_counter()
        try:
            result = p(graph)
        except GraphError as e:
            raise GraphError(f"pass {name!r} failed: {e}") from None
        elapsed = (time.perf_counter() - start) * 1e3
        if not isinstance(result, Graph):
            raise GraphError(f"pass {name!r} returned {type(result).__name__}, not a Graph")
        if result is not graph:  # an unchanged graph needs no second check
            try:
                result.verify()
            except GraphError as e:
                raise GraphError(f"pass {name!r} produced an invalid graph: {e}") from None
        report.passes.append(PassRecord(name, before, len(result.nodes), elapsed))
        graph = result
    return graph, report
