"""The source of a whole-program numba kernel (backends/numba_program.py): a small outer program
(a training step's forward or backward) lowered to one function -- its nodes by loop_source's
generator, each scan loop a call of the loop's own cached @njit kernel (backends/numba_loop.py:
compiled once, shared with the loop path and every program with that loop; inlined, its steps
as a loop in the function, only where its operands cannot be passed), its results written into
the out arrays the caller passes."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

from ..graph import Graph, Node
from .loop_source import _VIEWS, DOT_MIN, LoopSource
from .loop_values import Arr, Val, View, shifted_layout, strides
from .numba_backend import _HEADER, Unsupported, _dtype_name, _module_name, _typed
from .size_lift import lift_sizes

# whether a program kernel keeps its innermost nested loops' counts literal (hsmall's; size_lift:
# False lifts them too, one text for every size; tools/ab_lift.py's arms set it)
KEEP_INNERMOST = [True]


class ProgramSource(LoopSource):
    """Generates `kernel(out0, ..., const0, ..., dims, arg0, ..., work_<dtype>, ...)` for `graph`
    (dims: an int64 array of its sizes, lift_sizes; work_*: its workspaces, one per dtype, each a C array the caller makes once and passes to
    every call; the buffers and the called loops' workspaces are slices), writing its outputs
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
        self.called: list = []  # the numba_loop.LoopKernel handles the kernel calls (loop<j>)
        # workspace slices reused by liveness (top-level values only): buffer name -> its slice
        # (dtype, start, size); slices of values past their last read (`dying`: their reading
        # loop nests may still be open, so the group is flushed before one is reused), then
        # free (`pool`); a zero-initialised buffer (set in the kernel's first lines) never
        # takes a used slice
        self.slots: dict[str, tuple] = {}
        self.dying: list[tuple] = []
        self.pool: dict[str, list[tuple[int, int]]] = {}
        self.reusable, self.last_slot = True, ("", 0, 0)
        # (source(): the literals lift_sizes took out of the text, and the text with them in)
        self.dims: list[int] = []
        self.concrete = ""
        self.loop_dims: list = []  # (each called loop's dims: after the program's own in `dims`)

    def reserve(self, dtype: str, size: int) -> int:
        if self.reusable and self.dying:
            self.flush()
            for d, start, n in self.dying:
                self.pool.setdefault(d, []).append((start, n))
            self.dying = []
        fits = [p for p in self.pool.get(dtype, []) if p[1] >= size] if self.reusable else []
        if fits:
            start, n = min(fits, key=lambda p: p[1])
            self.pool[dtype].remove((start, n))
        else:
            start, n = super().reserve(dtype, size), size
        self.last_slot = (dtype, start, n)
        return start

    def buffer(self, shape: tuple, dtype: str, zero: bool = False) -> Arr:
        out, self.pending = self.pending, None
        if out is None:
            self.reusable = not zero
            made = super().buffer(shape, dtype, zero)
            self.reusable = True
            self.slots[made.name] = self.last_slot
            return made
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
        ends = last_reads(g)
        for k, node in enumerate(g.nodes):
            if node.op == "input":
                continue
            if node.op == "scan":
                self.vals[node] = self.scan(node)
            else:
                if node in self.outs and node.op not in _VIEWS:
                    self.pending = self.outs[node][1]  # computed straight into its out array
                self.vals[node] = self.lower(node)
                self.pending = None
            for done in ends.get(k, ()):  # values read for the last time: their slices free
                v = self.vals.get(done)
                if isinstance(v, Arr) and v.name in self.slots:
                    self.dying.append(self.slots.pop(v.name))
        self.results()
        self.flush()
        outs = [a.name for _, a in self.outs.values()]
        consts = [f"const{k}" for k in range(len(self.constants))]
        params = ", ".join(outs + consts + ["dims"] + args + self.work_params())
        lines = [*self.work_checks(), *self.setup, *self.step]
        body = ["    " + line for s in lines for line in s.split("\n")]
        imports = "".join(
            f"from {_module_name(h.source)} import kernel as loop{j}\n"
            for j, h in enumerate(self.called)
        )  # (numba_loop's modules, loaded first: ProgramKernel.prepare)
        head, _, decorator = _HEADER.rpartition("\n\n\n")
        head = head + "\n" + imports + "\n\n" + decorator
        lifted, self.dims = lift_sizes(body, KEEP_INNERMOST[0], divisors=True)
        unpack = [f"    n{k} = dims[{k}]" for k in range(len(self.dims))]
        text = head + f"def kernel({params}):\n" + "\n".join(unpack + lifted) + "\n"
        self.concrete = head + f"def kernel({params}):\n" + "\n".join(body) + "\n"
        for j, values in enumerate(self.loop_dims):  # (the called loops' sizes: structure
            # alone places them, so the slice's bounds may stay literal)
            at = f"dims[{len(self.dims)}:{len(self.dims) + len(values)}]"
            text, self.concrete = (re.sub(rf"\b_ld{j}\b", at, x) for x in (text, self.concrete))
            self.dims += [int(v) for v in values]
        return text

    def results(self) -> None:
        """Outputs not computed into their out arrays (views, inputs, constants, loops' slabs)
        copied there."""
        for o, out in self.outs.values():
            v = self.vals[o]
            if not (isinstance(v, Arr) and v.name == out.name):
                self.emit(
                    o.shape, lambda i, c=out, v=v: [f"{c.at(i)} = {v.at(i)}"], [v], (), out.name
                )

    def matmul(self, n: Node, ins: list[Val], dt: str) -> Val:
        """A 2-D product below DOT_MIN as out[i, :] = 0, then out[i, :] += x[i, kk] * y[kk, :]
        for kk in order (LoopSource's: the kk reduction innermost): each element the same
        sums in the same order, so the same bits, but the innermost loop runs over the
        output's columns, whose count lift_sizes keeps literal -- the reduction's count is
        lifted (over T in a weight gradient: one kernel for every T), and a runtime trip count
        innermost cost ~1.5 us of the (1, 5, 5) step's 3-4 us backward kernel (hsmall).
        Mixed dtypes (an accumulator of another dtype than out) keep LoopSource's."""
        out = columns_innermost(self, n, ins, dt)
        return super().matmul(n, ins, dt) if out is None else out

    def view(self, n: Node, x: Val, dt: str) -> Val:
        """LoopSource's views; a reshape that is not a squeeze reads its base through
        split_reshape_map where that applies."""
        v = super().view(n, x, dt)
        if n.op == "reshape" and isinstance(v, View) and not _squeeze(x.shape, n.shape):
            fn = split_reshape_map(x.shape, n.shape)
            if fn is not None:
                v.fn = fn
        return v

    # ---- a scan loop, inlined ---------------------------------------------------------------

    def scan(self, n: Node) -> Val:
        found = self.bodies.get(id(n.attrs))
        if found is None:
            raise Unsupported("a loop without a numba loop kernel")
        compiled, fixed = found[0], found[1]
        handle = getattr(found[2], "handle", None) if len(found) > 2 else None
        if handle is not None and self.callable(n, compiled):
            return self.call(n, compiled, handle)
        return self.inline(n, compiled, fixed)

    def slab_shape(self, n: Node) -> tuple[tuple, str]:
        """(shape, dtype) of a loop's slab (scan_ir.ys_places: + 1 row per shifted ys)."""
        a = n.attrs
        nc, length, outs = a["n_carry"], a["length"], a["body"].outputs
        c = sum(math.prod(o.shape) for o in outs[:nc])
        y = sum(math.prod(o.shape) for o in outs[nc:])
        moved = sum(math.prod(outs[nc + j].shape) for j, _ in a.get("shifted", ()))
        return (c + length * y + moved,), _dtype_name(outs[0].dtype)

    @staticmethod
    def callable(n: Node, compiled: Any) -> bool:
        """Whether the loop kernel can be called here: every operand an array of >= 1 dim (a
        0-d value is a 1-element buffer in this kernel, a 0-d array in the loop's)."""
        pre = getattr(compiled, "prologue", None)
        hoisted = pre.graph.outputs if pre is not None else []
        return all(v.shape for v in [*n.inputs, *hoisted])

    def call(self, n: Node, compiled: Any, handle: Any) -> Val:
        """The loop as a call of its own kernel `kernel(slab, length, reverse, *inputs,
        *hoisted, *constants)` (numba_loop.kernel_runner's call), with C arrays: a view without
        one is copied into a buffer first, so the call's types are the loop path's."""
        a = n.attrs
        nc, nx = a["n_carry"], a["n_xs"]
        ins = [self.vals[i] for i in n.inputs]
        before = set(self.slots)
        hoisted = self.prologue(compiled, ins[nc + nx :])
        operands = [self.c_array(v) for v in ins + hoisted]
        consts = []
        for value in handle.constants:
            self.constants.append(value)
            consts.append(f"const{len(self.constants) - 1}")
        slab = self.slab_array(n)
        shared = handle.shared  # (numba_loop.LoopInstance: its sizes, the shared kernel's text)
        if shared not in self.called:
            self.called.append(shared)
        loop = f"loop{self.called.index(shared)}"
        self.loop_dims.append(handle.dims)  # (the loop's `dims`: a slice of this kernel's)
        sizes = f"_ld{len(self.loop_dims) - 1}"  # (source() writes the slice in)
        length, reverse = f"np.int64({a['length']})", f"np.bool_({bool(a['reverse'])})"
        work, slices = [], []  # the loop kernel's workspaces: slices of this kernel's own
        for dtype, size in handle.work:
            start = self.reserve(dtype, size)
            slices.append(self.last_slot)
            work.append(self.work_view(dtype, start, (size,)))
        self.statement(
            f"{loop}({', '.join([slab.name, length, reverse, sizes, *operands, *consts, *work])})"
        )
        # (used by the call alone: its workspaces, its hoisted values and operand copies)
        # (in the slots' order, not a set's: string hashes differ from process to process, and
        # a kernel's source must not -- the kernel cache is by the source's digest)
        used = [k for k in self.slots if k not in before and k != slab.name]
        self.dying += slices + [self.slots.pop(k) for k in used]
        return slab

    def slab_array(self, n: Node) -> Arr:
        """Loop n's slab: its out array when the program returns it (a training forward's
        saved slab: no workspace of its size, no copy after the loop), else a buffer."""
        found = self.outs.get(n)
        if found is not None:
            return found[1]
        return self.buffer(*self.slab_shape(n))

    def c_array(self, v: Val) -> str:
        """The name of a C array holding v: its own array, or a buffer v is copied into."""
        if isinstance(v, Arr) and not v.lead and v.shape:
            return v.name
        array = v.arr()
        if array and array.startswith("buf") and array.endswith(")"):  # a buffer reshaped: C
            return array
        buf = self.buffer(v.shape, v.dtype)
        self.emit(v.shape, lambda i: [f"{buf.at(i)} = {v.at(i)}"], [v], (), buf.name)
        return buf.name

    def inline(self, n: Node, compiled: Any, fixed: list) -> Val:
        a = n.attrs
        nc, nx, length = a["n_carry"], a["n_xs"], a["length"]
        ins = [self.vals[i] for i in n.inputs]
        invariants = ins[nc + nx :]
        hoisted = self.prologue(compiled, invariants)
        g = compiled.graph
        shifted = a.get("shifted", ())
        slab = self.slab_array(n)
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
                cur, nxt = self.carry_buffer(node.shape, dt), self.carry_buffer(node.shape, dt)
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


def last_reads(g: Graph) -> dict[int, list[Node]]:
    """Node position -> the values (view chains followed to their base) read for the last time
    there; the outputs' never (the kernel copies some of them into their out arrays last)."""
    base: dict[Node, Node] = {}
    last: dict[Node, int] = {}
    for k, n in enumerate(g.nodes):
        base[n] = base.get(n.inputs[0], n.inputs[0]) if n.op in _VIEWS and n.inputs else n
        last.setdefault(base[n], k)
        for i in n.inputs:
            last[base.get(i, i)] = k
    for o in g.outputs:
        last[base.get(o, o)] = len(g.nodes)
    ends: dict[int, list[Node]] = {}
    for n, k in last.items():
        ends.setdefault(k, []).append(n)
    return ends


def columns_innermost(gen: LoopSource, n: Node, ins: list[Val], dt: str) -> Val | None:
    """ProgramSource.matmul's form of a small 2-D float product, its statements emitted into
    `gen` (any LoopSource: tools/ab_lift.py's arm "mm" puts it in loop kernels); None for a
    product it does not take."""
    x, y = ins
    m, k, p = x.shape[-2], x.shape[-1], y.shape[-1]
    if (
        len(n.shape) != 2
        or len(x.shape) != 2
        or len(y.shape) != 2
        or m * k * p >= DOT_MIN
        or not (dt == x.dtype == y.dtype)
        or not dt.startswith("float")
    ):
        return None
    out = gen.buffer(n.shape, dt)
    xv = gen.fresh("xv")
    for line in [
        f"for i0 in range({m}):",
        f"    for i1 in range({p}):",
        f"        {out.at(['i0', 'i1'])} = {_typed(dt, 0)}",
        f"    for kk in range({k}):",
        f"        {xv} = {x.at(['i0', 'kk'])}",
        f"        for i1 in range({p}):",
        f"            {out.at(['i0', 'i1'])} += {xv} * {y.at(['kk', 'i1'])}",
    ]:
        gen.statement(line)
    return out


def _squeeze(in_shape: tuple, out_shape: tuple) -> bool:
    """Whether a reshape only drops or adds axes of size 1 (reshape_map's own case)."""
    return [s for s in in_shape if s != 1] == [s for s in out_shape if s != 1]


def split_reshape_map(in_shape: tuple, out_shape: tuple) -> Any:
    """A reshape's index map (out indices -> in indices, as reshape_map) that divides single
    indices only: where every axis boundary of both shapes (C strides) divides the next, each
    out index is cut into digits at the in axes' boundaries -- `i // q % r`, q and r numbers
    -- and each in index is the sum of its digits scaled, e.g. (100, 24) -> (50, 48): in0 =
    i0 // 2, in1 = i0 % 2 * 24 + i1. reshape_map divides the flat offset, a sum of every out
    index, per in axis: ((i0 * 24 + i1) // 48, (i0 * 24 + i1) % 48): in the innermost loop
    a division per element of a sum LLVM cannot take apart (and, its sizes lifted, by a
    number it cannot see: an integer division each). None where the boundaries do not
    nest ((4, 3) -> (3, 4)): reshape_map's then."""
    total = math.prod(in_shape)
    o_str, i_str = strides(out_shape), strides(in_shape)
    outs = [(j, o_str[j], o_str[j] * s) for j, s in enumerate(out_shape) if s != 1]
    ins = [(d, i_str[d], i_str[d] * s) for d, s in enumerate(in_shape) if s != 1]
    cuts = sorted({1, total, *(c for _, lo, hi in outs + ins for c in (lo, hi))})
    if total == 0 or any(b % a for a, b in itertools.pairwise(cuts)):
        return None
    digits = []  # (out axis, its strides' span, in axis, its stride, the digit's span)
    for lo, hi in itertools.pairwise(cuts):
        j, o_lo, o_hi = next(o for o in outs if o[1] <= lo < o[2])
        d, i_lo, _ = next(i for i in ins if i[1] <= lo < i[2])
        digits.append((j, o_lo, o_hi, d, i_lo, lo, hi))

    def fn(idx: list[str]) -> list[str]:
        terms: dict[int, list[str]] = {}
        for j, o_lo, o_hi, d, i_lo, lo, hi in reversed(digits):  # (the highest digit first)
            i = idx[j] if _atom(idx[j]) else f"({idx[j]})"
            e = i if lo == o_lo else f"{i} // {lo // o_lo}"
            e = e if hi == o_hi else f"{e} % {hi // lo}"
            terms.setdefault(d, []).append(e if lo == i_lo else f"{e} * {lo // i_lo}")
        out = ["0"] * len(in_shape)
        for d, parts in terms.items():
            out[d] = parts[0] if len(parts) == 1 else f"({' + '.join(parts)})"
        return out

    return fn


def _atom(expr: str) -> bool:
    """Whether `expr` needs no parentheses as an operand: a name, a number, or one group in
    parentheses (none added around it: a reshape reading a 1-D base writes its offset as
    reshape_map did, so those kernels' texts -- their cache keys -- are unchanged)."""
    if expr.isidentifier() or expr.isdigit():
        return True
    depth = 0
    for k, ch in enumerate(expr):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and k < len(expr) - 1:
            return False
    return expr.startswith("(") and depth == 0
