"""Lowering a graph to a program: straight-line Python over NumPy, one line per node, values
released after their last use. `Compiled` runs it and turns failures into errors naming the node.
"""
from __future__ import annotations

import builtins
import itertools
import traceback
from typing import Any, Sequence

import numpy as np

from .errors import DTypeError, ShapeError, TapernnError, ValueRangeError, where
from .graph import Graph, Node
from .ops.registry import get_op
from .passes import CompileReport, Pass, default_passes, run_passes

_program_ids = itertools.count()


class Program:
    """Generated source for one graph plus the namespace it runs in."""

    def __init__(self, graph: Graph, fn_name: str = "program"):
        self.graph = graph
        self.filename = f"<tapernn program {next(_program_ids)}>"
        self.namespace: dict[str, Any] = {"np": np}
        self.line_nodes: dict[int, Node] = {}
        self.kernels = 0
        self.source = self._generate(fn_name)
        code = builtins.compile(self.source, self.filename, "exec")
        exec(code, self.namespace)
        self.fn = self.namespace[fn_name]

    def _generate(self, fn_name: str) -> str:
        g = self.graph
        num = g.numbering()
        names: dict[Node, str] = {}
        for k, n in enumerate(g.inputs):
            names[n] = f"a{k}"
        last_use = _last_uses(g)
        lines = [f"def {fn_name}({', '.join(names[n] for n in g.inputs)}):"]
        for n in g.nodes:
            if n.op == "input":
                continue
            if n.op == "constant":
                names[n] = f"c{num[n]}"
                self.namespace[names[n]] = n.value
                continue
            names[n] = f"v{num[n]}"
            fname = f"f_{n.op}"
            self.namespace[fname] = get_op(n.op).forward
            args = [names[i] for i in n.inputs] + [f"{k}={v!r}" for k, v in n.attrs.items()]
            lines.append(f"    {names[n]} = {fname}({', '.join(args)})")
            self.line_nodes[len(lines)] = n
            self.kernels += 1
            dead = [names[i] for i in last_use.get(n, ()) if i.op not in ("input", "constant")]
            if dead:
                lines.append(f"    del {', '.join(dead)}")
        results = [_owned(n, names[n]) for n in g.outputs]
        lines.append(f"    return ({', '.join(results)}{',' if len(results) == 1 else ''})")
        return "\n".join(lines) + "\n"

    def failing_node(self, exc: BaseException) -> Node | None:
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            if frame.f_code.co_filename == self.filename:
                return self.line_nodes.get(lineno)
        return None


def _owned(n: Node, name: str) -> str:
    # outputs that alias an input, a constant or a broadcast view are copied: callers own results
    if n.op in ("input", "constant") or get_op(n.op).view:
        return f"np.array({name})"
    return f"np.asarray({name})" if n.shape == () else name


def _last_uses(g: Graph) -> dict[Node, list[Node]]:
    """For each node, the values whose last reader it is (never graph outputs)."""
    keep = set(g.outputs)
    last: dict[Node, Node] = {}
    for n in g.nodes:
        for i in n.inputs:
            last[i] = n
    out: dict[Node, list[Node]] = {}
    for value, reader in last.items():
        if value not in keep:
            out.setdefault(reader, []).append(value)
    for reader in out:
        out[reader] = list(dict.fromkeys(out[reader]))
    return out


def live_bytes(g: Graph) -> tuple[int, int]:
    """(naive bytes, peak bytes) of the values computed by `g` in tape order, inputs excluded."""
    last_use = _last_uses(g)
    naive = sum(n.nbytes for n in g.nodes if n.op not in ("input", "constant"))
    live = peak = 0
    for n in g.nodes:
        if n.op in ("input", "constant"):
            continue
        live += n.nbytes
        peak = max(peak, live)
        live -= sum(i.nbytes for i in last_use.get(n, ()) if i.op not in ("input", "constant"))
    return naive, peak


class Compiled:
    """A compiled graph: call it with arrays (one per graph input) to get its outputs.

    `graph` is the optimised graph, `report` the CompileReport, `source` the generated program.
    Returns one array for a single-output graph traced from a function returning a Var, otherwise
    a list of arrays in `graph.outputs` order.
    """

    def __init__(self, graph: Graph, report: CompileReport | None = None):
        self.graph = graph
        self.report = report or CompileReport()
        self.program = Program(graph)
        self.source = self.program.source
        self.report.kernels = self.program.kernels
        naive, peak = live_bytes(graph)
        self.report.naive_bytes = naive
        self.report.planned_bytes = self.report.planned_bytes or naive
        self.report.peak_bytes = peak
        self._single = bool(graph.meta.get("single_output")) and len(graph.outputs) == 1

    def __call__(self, *arrays: Any) -> Any:
        inputs = self.graph.inputs
        if len(arrays) != len(inputs):
            names = [n.name for n in inputs]
            raise TapernnError(f"compiled program takes {len(inputs)} arrays {names}, got {len(arrays)}")
        args = [check_input(n, a) for n, a in zip(inputs, arrays)]
        outs = self.run(args)
        return outs[0] if self._single else list(outs)

    def run(self, args: Sequence[np.ndarray]) -> tuple:
        """Run on already-checked arrays (the fast path modules use)."""
        try:
            return self.program.fn(*args)
        except TapernnError as e:
            raise _locate(e, self.program.failing_node(e), type(e)) from None
        except IndexError as e:
            raise _locate(e, self.program.failing_node(e), ValueRangeError) from None
        except (ValueError, TypeError, FloatingPointError) as e:
            raise _locate(e, self.program.failing_node(e), TapernnError) from None

    def __repr__(self) -> str:
        return f"<Compiled {len(self.graph.nodes)} nodes, {self.report.kernels} kernels>"

    def _repr_svg_(self) -> str | None:
        from .export import repr_svg
        return repr_svg(self)


def _locate(e: BaseException, node: Node | None, cls: type) -> TapernnError:
    if node is None:
        return cls(str(e))
    return cls(f"{node.op} failed{where(node.scope or None, node.step)}: {e}")


def check_input(n: Node, a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.shape != n.shape:
        raise ShapeError(f"input {n.name!r}{where(n.scope or None, n.step)}: expected shape "
                         f"{n.shape}, got {arr.shape}")
    if arr.dtype != n.dtype:
        if arr.dtype.kind in "iu" and n.dtype.kind in "iu":
            return arr.astype(n.dtype)
        raise DTypeError(f"input {n.name!r}: expected dtype {n.dtype}, got {arr.dtype}")
    return arr


def compile(graph: Graph, passes: Sequence[Pass] | None = None) -> Compiled:
    """Optimise `graph` with `passes` (default: the default pipeline) and build its program."""
    graph.verify()
    optimised, report = run_passes(graph, default_passes() if passes is None else passes)
    return Compiled(optimised, report)
