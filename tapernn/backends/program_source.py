"""The source of a whole-program numba kernel (backends/numba_program.py): a small outer program
(a training step's forward or backward) lowered to one function -- its nodes by loop_source's
generator, its scan loops inlined (their compiled bodies' steps as a loop in the function), its
results fresh arrays returned as a tuple."""

from __future__ import annotations

import math
from typing import Any

from ..graph import Graph, Node
from .loop_source import _VIEWS, LoopSource, shifted_layout
from .loop_values import Arr, Val, View
from .numba_backend import _HEADER, Unsupported, _dtype_name, _typed


class ProgramSource(LoopSource):
    """Generates `kernel(out0, ..., const0, ..., arg0, ...)` for `graph`, writing its outputs
    into `out<j>` (C arrays of the outputs' shapes the caller makes per call: a kernel returning
    arrays pays ~3 us per array to box it); `bodies`: id(scan attrs) -> (compiled body, fixed
    carries, ...) of its loops (LoweringContext.bodies). `returns`: per graph output, the
    out<j> index, or ("input", k) for an output the graph lets alias its input k."""

    def __init__(self, graph: Graph, bodies: dict):
        super().__init__(graph, 0, 0, [])
        self.bodies = bodies
        alias = set(graph.meta.outputs_may_alias_inputs)
        position = {n: k for k, n in enumerate(graph.inputs)}
        # (output node or (node, position) -> its out array: an output the program computes is
        # one array at every position it is returned at, as in the NumPy program; an input or a
        # constant is copied, once per position)
        self.outs: dict[Any, tuple[Node, Arr]] = {}
        self.returns: list = []
        for k, o in enumerate(graph.outputs):
            if o.op == "input" and k in alias:
                self.returns.append(("input", position[o]))
                continue
            key = (o, k) if o.op in ("input", "constant") else o
            if key not in self.outs:
                j = len(self.outs)
                self.outs[key] = (o, Arr(f"out{j}", o.shape, _dtype_name(o.dtype), empty="()"))
            self.returns.append(int(self.outs[key][1].name[3:]))
        self.pending: Arr | None = None  # the out array the next buffer() hands out

    def buffer(self, shape: tuple, dtype: str, zero: bool = False) -> Arr:
        out, self.pending = self.pending, None
        if out is None:
            return super().buffer(shape, dtype, zero)
        if zero:
            self.loops(self.setup, shape, lambda i: [f"{out.at(i)} = {_typed(dtype, 0)}"])
        return out

    def source(self) -> str:
        g = self.graph
        args = [f"arg{k}" for k in range(len(g.inputs))]
        for k, node in enumerate(g.inputs):
            if not node.shape:  # a 0-d input may come as a NumPy scalar
                raise Unsupported("a 0-d input")
            self.vals[node] = Arr(args[k], node.shape, _dtype_name(node.dtype))
        for node in g.nodes:
            if node.op == "input":
                continue
            if node.op == "scan":
                self.vals[node] = self.scan(node)
                continue
            if node in self.outs and node.op not in _VIEWS:
                self.pending = self.outs[node][1]  # computed straight into its out array
            self.vals[node] = self.lower(node)
            self.pending = None
        self.results()
        self.flush()
        outs = [a.name for _, a in self.outs.values()]
        consts = [f"const{k}" for k in range(len(self.constants))]
        text = [f"def kernel({', '.join(outs + consts + args)}):"]
        text += ["    " + line for line in self.setup + self.step]
        return _HEADER + "\n".join(text) + "\n"

    def results(self) -> None:
        """Outputs not computed into their out arrays (views, inputs, constants, loops' slabs)
        copied there."""
        for o, out in self.outs.values():
            v = self.vals[o]
            if not (isinstance(v, Arr) and v.name == out.name):
                self.emit(
                    o.shape, lambda i, c=out, v=v: [f"{c.at(i)} = {v.at(i)}"], [v], (), out.name
                )

    # ---- a scan loop, inlined ---------------------------------------------------------------

    def scan(self, n: Node) -> Val:
        found = self.bodies.get(id(n.attrs))
        if found is None:
            raise Unsupported("a loop without a numba loop kernel")
        compiled, fixed = found[0], found[1]
        a = n.attrs
        nc, nx, length = a["n_carry"], a["n_xs"], a["length"]
        ins = [self.vals[i] for i in n.inputs]
        invariants = ins[nc + nx :]
        hoisted = self.prologue(compiled, invariants)
        g = compiled.graph
        c = sum(math.prod(i.shape) for i in g.inputs[:nc])
        y = sum(math.prod(o.shape) for o in a["body"].outputs[nc:])
        dt = _dtype_name(a["body"].outputs[0].dtype)
        shifted = a.get("shifted", ())  # (scan_ir.ys_places: + 1 row per shifted ys)
        moved = sum(math.prod(a["body"].outputs[nc + j].shape) for j, _ in shifted)
        slab = self.buffer((c + length * y + moved,), dt)
        live = [k for k in range(nc) if k not in fixed]
        carries = self.enter(g, nc, nx, live, ins, invariants + hoisted)
        self.flush()
        outer, self.step = self.step, []
        saved = (self.graph, self.nc, self.live, self.slab, self.layout, self.firsts)
        self.graph, self.nc, self.live, self.slab = g, nc, live, slab.name
        if shifted:
            self.layout, self.firsts = shifted_layout(a, str(length)), dict(enumerate(ins[:nc]))
        for node in g.nodes:
            if node.op != "input":
                self.vals[node] = self.lower(node)
        self.write_outputs(carries)
        self.graph, self.nc, self.live, self.slab, self.layout, self.firsts = saved
        outer += [
            f"for s in range({length}):",
            f"    t = {f'{length - 1} - s' if a['reverse'] else 's'}",
        ]
        outer += ["    " + line for line in self.step]
        outer += self.final
        self.step = outer
        return slab

    def prologue(self, compiled: Any, invariants: list[Val]) -> list[Val]:
        """The values of the loop's invariants alone (scan_hoist), computed before the loop."""
        pre = getattr(compiled, "prologue", None)
        if pre is None:
            return []
        for node, v in zip(pre.graph.inputs, invariants):
            self.vals[node] = v
        for node in pre.graph.nodes:
            if node.op != "input":
                self.vals[node] = self.lower(node)
        return [self.vals[o] for o in pre.graph.outputs]

    def enter(self, g: Graph, nc: int, nx: int, live: list[int], ins: list[Val], rest: list):
        """The body's inputs bound: live carries double-buffered (copied in from the initial
        values), xs read at row t, the others as they are."""
        carries = {}
        for k, node in enumerate(g.inputs):
            if k < nc and k in live:
                dt = _dtype_name(node.dtype)
                cur, nxt = self.buffer(node.shape, dt), self.buffer(node.shape, dt)
                first = ins[k]
                self.emit(
                    node.shape,
                    lambda i, c=cur, v=first: [f"{c.at(i)} = {v.at(i)}"],
                    [first],
                    (),
                    cur.name,
                )
                carries[k] = (cur, nxt)
                self.vals[node] = cur
            elif nc <= k < nc + nx:
                base = ins[k]
                arr = base.arr()
                self.vals[node] = View(
                    base, node.shape, lambda idx: ["t", *idx], f"{arr}[t]" if arr else None
                )
            else:
                self.vals[node] = ins[k] if k < nc + nx else rest[k - nc - nx]
        return carries
