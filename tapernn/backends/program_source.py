"""The source of a whole-program numba kernel (backends/numba_program.py): a small outer program
(a training step's forward or backward) lowered to one function -- its nodes by loop_source's
generator, its scan loops inlined (their compiled bodies' steps as a loop in the function), its
results fresh arrays returned as a tuple."""

from __future__ import annotations

import math
from typing import Any

from ..graph import Graph, Node
from .loop_source import LoopSource
from .loop_values import Arr, Val, View
from .numba_backend import _HEADER, Unsupported, _dtype_name


class ProgramSource(LoopSource):
    """Generates `kernel(const0, ..., arg0, ...) -> (outputs,)` for `graph`; `bodies`:
    id(scan attrs) -> (compiled body, fixed carries, ...) of its loops (LoweringContext.bodies).
    Per call every value has a buffer of its own (np.empty in the function), so an output that
    is a node's buffer is returned as it is; views, inputs and constants are copied out."""

    def __init__(self, graph: Graph, bodies: dict):
        super().__init__(graph, 0, 0, [])
        self.bodies = bodies
        self.owned: set[str] = set()  # buffers made by this call (returnable as they are)

    def buffer(self, shape: tuple, dtype: str, zero: bool = False) -> Arr:
        out = super().buffer(shape, dtype, zero)
        self.owned.add(out.name)
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
            else:
                self.vals[node] = self.lower(node)
        results = self.results()
        self.flush()
        consts = [f"const{k}" for k in range(len(self.constants))]
        text = [f"def kernel({', '.join(consts + args)}):"]
        text += ["    " + line for line in self.setup + self.step]
        text.append(f"    return ({', '.join(results)}{',' if len(results) == 1 else ''})")
        return _HEADER + "\n".join(text) + "\n"

    def results(self) -> list[str]:
        """The outputs' array names: a buffer made by this call as it is, anything else (views,
        inputs, constants) copied into one (once per node)."""
        names: dict[Node, str] = {}
        for o in self.graph.outputs:
            if o in names:
                continue
            if not o.shape:
                raise Unsupported("a 0-d output")
            v = self.vals[o]
            mine = isinstance(v, Arr) and v.name in self.owned and not v.lead
            if mine and v.name not in names.values():
                names[o] = v.name
                continue
            copy = self.buffer(o.shape, v.dtype)
            self.emit(
                o.shape, lambda i, c=copy, v=v: [f"{c.at(i)} = {v.at(i)}"], [v], (), copy.name
            )
            names[o] = copy.name
        return [names[o] for o in self.graph.outputs]

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
        slab = self.buffer((c + length * y,), dt)
        live = [k for k in range(nc) if k not in fixed]
        carries = self.enter(g, nc, nx, live, ins, invariants + hoisted)
        self.flush()
        outer, self.step = self.step, []
        saved = (self.graph, self.nc, self.live, self.slab)
        self.graph, self.nc, self.live, self.slab = g, nc, live, slab.name
        for node in g.nodes:
            if node.op != "input":
                self.vals[node] = self.lower(node)
        self.write_outputs(carries)
        self.graph, self.nc, self.live, self.slab = saved
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
