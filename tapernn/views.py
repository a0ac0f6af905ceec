"""Views of the IR and of compile reports, for people and tools (no compiler work): the text of
a graph (`Graph.__str__`: one line per node, also diagram tooltips), its networkx form
(`Graph.to_networkx`), the table of a `CompileReport` (`str(report)`), the graph after each pass
as files (`compile(..., dump=folder)`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .fileio import atomic_write

if TYPE_CHECKING:
    import networkx as nx

    from .graph import Graph, Node
    from .passes.driver import CompileReport


def format_graph(graph: Graph) -> str:
    num = graph.numbering()
    ins = ", ".join(f"%{num[n]}:{n.name}" for n in graph.inputs)
    lines = [f"graph({ins}) {{"]
    lines += ["  " + format_node(n, num) for n in graph.nodes]
    lines.append(f"  return {', '.join(f'%{num[n]}' for n in graph.outputs)}")
    lines.append("}")
    return "\n".join(lines)


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    import networkx as nx  # (here: 0.2 s of `import tapernn` for a view few programs ask for)

    num = graph.numbering()
    g = nx.MultiDiGraph()
    outs = {n: k for k, n in enumerate(graph.outputs)}
    for n, k in num.items():
        g.add_node(
            k,
            op=n.op,
            shape=list(n.shape),
            dtype=str(n.dtype),
            step=n.step,
            scope=n.scope,
            phase=n.phase,
            name=n.name,
            kind=n.kind,
            output=outs.get(n),
            attrs=printable_attrs(n.attrs),
        )
    for n, k in num.items():
        for pos, i in enumerate(n.inputs):
            g.add_edge(num[i], k, key=pos, arg=pos)
    return g


def printable_attrs(attrs: dict) -> dict:
    return {
        k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
        for k, v in attrs.items()
    }


def format_attrs(attrs: dict) -> str:
    items = [f"{k}={_short(v)}" for k, v in attrs.items() if k != "kind"]
    return "[" + ", ".join(items) + "]" if items else ""


def _short(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array{v.shape}"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def format_node(n: Node, num: dict[Node, int]) -> str:
    """One line: `%5 = tanh %3  (2, 4) float64  step=1 scope=seq.lstm [bwd]`."""
    if n.op == "input":
        rhs = f"input {n.attrs.get('kind', 'data')}:{n.name}"
    elif n.op == "constant":
        v = n.value
        rhs = f"constant {v.item()!r}" if v is not None and v.size == 1 else "constant"
    else:
        args = " ".join(f"%{num[i]}" if i in num else f"?{i.op}" for i in n.inputs)
        rhs = f"{n.op}{format_attrs(n.attrs)} {args}".rstrip()
    tags = []
    if n.step is not None:
        tags.append(f"step={n.step}")
    if n.scope:
        tags.append(f"scope={n.scope}")
    if n.phase != "forward":
        tags.append("bwd")
    shape = "(" + ", ".join(map(str, n.shape)) + ("," if len(n.shape) == 1 else "") + ")"
    return f"%{num[n]} = {rhs}  {shape} {n.dtype}  {' '.join(tags)}".rstrip()


def format_report(report: CompileReport) -> str:
    """The table `str(report)` prints: passes, then kernels, backend and bytes."""
    width = max([len(p.name) for p in report.passes] + [28]) + 2
    labelled = any(p.program for p in report.passes)
    lead = f"{'program':<10}" if labelled else ""
    rows = [f"{lead}{'pass':<{width}}{'nodes before':>13}{'nodes after':>13}{'ms':>10}"]
    for p in report.passes:
        lead = f"{p.program:<10}" if labelled else ""
        rows.append(
            f"{lead}{p.name:<{width}}{p.nodes_before:>13}{p.nodes_after:>13}{p.milliseconds:>10.2f}"
        )
    rows.append("")
    rows.append(f"fused groups              {len(report.fused_groups)}")
    rows.append(f"kernels per call          {report.kernels}")
    if report.backend:
        rows.append(
            f"backend                   {report.backend} ({report.compiled_kernels} "
            f"compiled kernels, {report.loop_compiled_kernels} in loop bodies, "
            f"{len(report.fallbacks)} groups on NumPy)"
        )
        rows += [f"  on NumPy: {why}" for why in report.fallbacks[:5]]
        if report.backend_note:
            rows.append(f"  {report.backend_note}")
    if report.kernel:
        rows.append(f"program                   {report.kernel}")
    if getattr(report, "threads", ""):
        rows.append(f"threads                   {report.threads}")
    rows.append(f"naive bytes               {report.naive_bytes:,}")
    rows.append(f"planned bytes             {report.planned_bytes:,}")
    rows.append(f"peak bytes                {report.peak_bytes:,}")
    rows.append(f"saved for backward bytes  {report.saved_for_backward_bytes:,}")
    rows.append(f"resident bytes            {report.resident_bytes:,}")
    if report.workspace_bytes:
        rows.append(f"  kernel workspace bytes  {report.workspace_bytes:,} (in resident bytes)")
    rows += [str(loop) for loop in report.loops]
    rows += [f"note: {n}" for n in report.notes]
    return "\n".join(rows)


def graph_files(folder: str | os.PathLike) -> Callable[[int, str, Graph], None]:
    """The `dump=` hook of run_passes for a folder: `NN_pass.txt`, the graph after each pass."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def write(index: int, name: str, graph: Graph) -> None:
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
        text = (str(graph) + "\n").encode()
        atomic_write(folder / f"{index:02d}_{safe}.txt", lambda f: f.write(text))

    return write
