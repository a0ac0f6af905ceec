"""The source of a whole-loop numba kernel (backends/numba_loop.py): a scan body's optimised
graph lowered to one function running every step -- views (getitem, transpose, reshape,
broadcast_to) as index arithmetic, every other node a loop nest into a buffer (np.dot for large 2-D
matmuls), elementwise instructions by numba_backend's scalar lowering. Buffers are C views of the
kernel's workspaces (one 1-D array per dtype, its last parameters), which the caller makes once and
passes to every call (LoopSource.buffer); only the live carries' swapped pairs are made per call
(LoopSource.carry_buffer says why)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np

from ..graph import Graph, Node
from .loop_values import Arr, Val, View, bcast, flat, getitem_map, loop_count, reads, reshape_map
from .numba_backend import (
    _CASTS_OPERANDS,
    _HEADER,
    Unsupported,
    _dtype_name,
    _scalar,
    _sigmoid_lines,
    _typed,
    vector_ops,
)
from .size_lift import lift_function, sizes_written_in

# matmuls with M*N*K at least this go to np.dot (BLAS); smaller ones are explicit loops (a
# BLAS call's fixed cost is most of a tiny product's time)
DOT_MIN = 4096
_NP_DTYPE = {"float32": "np.float32", "float64": "np.float64", "bool": "np.bool_"}
_ITEMSIZE = {"float32": 4, "float64": 8, "bool": 1}
# a workspace buffer of at least WORK_ALIGN bytes starts at a multiple of WORK_ALIGN bytes of
# its workspace (a cache line: its vector loops start aligned), a smaller one at a multiple of
# SMALL_ALIGN (a 5-element float32 buffer padded to 64 bytes tripled the (1, 5, 5) workspaces)
WORK_ALIGN, SMALL_ALIGN = 64, 16
_VIEWS = ("getitem", "transpose", "reshape", "broadcast_to", "stop_gradient")
# a loop kernel keeps its sizes written in, where LLVM folds them, unless its carries have more
# than LITERAL_ROWS[0] rows: then it reads them from `dims` (size_lift: one text and one compile
# for every size of the structure). Lifted, the (1, 5, 5) f32 step was 1-2 us (4-9 %) slower and
# (4, 10, 16)'s 20-30 %, for ~10 % less CPU in a cold sweep of 12 models (BENCHMARKS.md "hlift"):
# so no loop is lifted by default; [1] lifts every loop of B >= 2 (tools/ab_lift.py's arms set it)
LITERAL_ROWS = [sys.maxsize]


class LoopSource:
    """Generates the kernel `kernel(slab, length, reverse, dims, *inputs, *constants, *work)`
    of a compiled body `graph` (inputs: carries, xs, invariants, hoisted values; outputs: the
    `live` carries then the ys; dims: its sizes, size_lift). `constants`: the constant nodes'
    values, passed as arguments."""

    def __init__(
        self, graph: Graph, n_carry: int, n_xs: int, live: list[int], layout: tuple | None = None
    ):
        self.graph, self.nc, self.nx, self.live = graph, n_carry, n_xs, live
        # (per ys (start, stride), per shifted ys (carry k, offset of its initial value)):
        # scan_ir.ys_places' slab layout, None for the plain rows
        self.layout = layout
        self.firsts: dict | None = None  # carry k -> its initial value (an inlined loop's)
        self.vals: dict[Node, Val] = {}
        self.setup: list[str] = []  # before the loop
        self.step: list[str] = []  # the loop body
        self.constants: list[np.ndarray] = []
        self.names = 0
        # the open loop nest: (shape, bodies, buffers written at its index, written elsewhere)
        self.group: tuple | None = None
        self.slab = "slab"  # the array the loop's results go to (a buffer, when inlined)
        # dtype -> elements of the kernel's workspace `work_<dtype>` taken so far: every buffer
        # is a C view of a slice of it (the caller makes each workspace once and passes it to
        # every call: no allocation per call)
        self.work: dict[str, int] = {}
        # (source(): the sizes its text reads from `dims`, and the text with them written in)
        self.dims: list[int] = []
        self.concrete = ""

    def fresh(self, prefix: str) -> str:
        self.names += 1
        return f"{prefix}{self.names}"

    def buffer(self, shape: tuple, dtype: str, zero: bool = False) -> Arr:
        """A C array of `shape` for one value: a view of the next slice of the workspace of
        its dtype, aligned to WORK_ALIGN bytes (small ones: SMALL_ALIGN; zero-filled per call
        when asked)."""
        name = self.fresh("buf")
        shape = tuple(shape)
        start = self.reserve(dtype, max(math.prod(shape), 1))
        self.setup.append(f"{name} = {self.work_view(dtype, start, shape or (1,))}")
        out = Arr(name, shape, dtype)
        if zero:
            zero_value = _typed(dtype, 0)
            self.loops(self.setup, shape, lambda i: [f"{out.at(i)} = {zero_value}"])
        return out

    def carry_buffer(self, shape: tuple, dtype: str) -> Arr:
        """One of a live carry's two buffers (swapped every step): made per call by np.empty,
        not in the workspace. Measured (FastLSTM (4, 8, 32) forward loop kernel, Zen 4): with
        the carries as workspace views swapped through the step loop's phi, LLVM's loops ran
        3.8x slower (47 vs 12 us a call; the slices of numba's own `work[a:b].reshape` were
        fine, but they cost more per call than np.empty); carries made apart: 12 us."""
        name = self.fresh("buf")
        self.setup.append(f"{name} = np.empty({tuple(shape) or (1,)}, {_NP_DTYPE[dtype]})")
        return Arr(name, shape, dtype)

    def reserve(self, dtype: str, size: int) -> int:
        """The start of `size` elements of the workspace of `dtype`, taken for one buffer."""
        itemsize = _ITEMSIZE[dtype]
        align = WORK_ALIGN if size * itemsize >= WORK_ALIGN else SMALL_ALIGN
        step = max(align // itemsize, 1)
        start = -(-self.work.get(dtype, 0) // step) * step
        self.work[dtype] = start + size
        return start

    @staticmethod
    def work_view(dtype: str, start: int, shape: tuple) -> str:
        """A C array of `shape` at element `start` of the workspace of `dtype` (c_view: a slice
        and a reshape without their checks, which slowed numba's cold compile ~30 %)."""
        view = f"c_view(work_{dtype}, {start}, {shape})"
        return f"{view}.view(np.uint8)" if dtype == "bool" else view  # (see source())

    def work_params(self) -> list[str]:
        return [f"work_{dtype}" for dtype in self.work]

    def work_checks(self) -> list[str]:
        """The kernel's first lines: each workspace at least as large as its buffers need
        (c_view does not check; a runner always passes LoopKernel.work's sizes)."""
        return [
            f"if work_{dtype}.size < {size}:\n    raise ValueError('workspace too small')"
            for dtype, size in self.work.items()
        ]

    def work_sizes(self) -> list[tuple[str, int]]:
        """(dtype name, elements) of each workspace, in the kernel's parameter order."""
        return list(self.work.items())

    def source(self) -> str:
        g = self.graph
        n_in = len(g.inputs)
        args = [f"arg{k}" for k in range(n_in)]
        carries = {}
        copies: dict[tuple, list] = {}  # one loop per shape copies the initial carries
        for k, node in enumerate(g.inputs):
            dt = _dtype_name(node.dtype)
            if k < self.nc and k in self.live:
                cur, nxt = self.carry_buffer(node.shape, dt), self.carry_buffer(node.shape, dt)
                first = Arr(args[k], node.shape, dt, empty="()")
                copies.setdefault(node.shape, []).append(
                    lambda i, c=cur, a=first: [f"{c.at(i)} = {a.at(i)}"]
                )
                carries[k] = (cur, nxt)
                self.vals[node] = cur
            elif self.nc <= k < self.nc + self.nx:
                self.vals[node] = Arr(args[k], node.shape, dt, lead=["t"])
            else:
                self.vals[node] = Arr(args[k], node.shape, dt, empty="()")
        for shape, bodies in copies.items():
            self.loops(self.setup, shape, lambda i, b=bodies: [x for f in b for x in f(i)])
        for node in g.nodes:
            if node.op != "input":
                self.vals[node] = self.lower(node)
        self.write_outputs(carries)
        consts = [f"const{k}" for k in range(len(self.constants))]
        params = ", ".join(["dims", *args, *consts, *self.work_params()])
        head = f"def kernel(slab, length, reverse, {params}):"
        # bool arrays read as uint8: numba's bool element loads kept LLVM from vectorising a
        # whole nest (a `where` on a (B, 1) mask: a small LSTM's forward 2.8x slower, hqa12)
        views = [
            f"{a} = {a}.view(np.uint8)"
            for a, node in zip(args, g.inputs)
            if _dtype_name(node.dtype) == "bool"
        ]
        setup = [*views, *self.work_checks(), *self.setup]
        text = ["    " + line for s in setup for line in s.split("\n")]
        text += [
            "    for s in range(length):",
            "        t = length - 1 - s if reverse else s",
        ]
        text += ["        " + line for line in self.step]
        text += ["    " + line for line in self.final]
        text.append("    return slab")
        rows = [node.shape[0] for node in g.inputs[: self.nc] if node.shape]
        if rows and max(rows) <= LITERAL_ROWS[0]:
            text = [head, *text]
        else:  # (its sizes read from `dims`: one text for every size of the structure)
            text, self.dims = lift_function([head], text, "dims")
        self.concrete = _HEADER + sizes_written_in("\n".join(text) + "\n", self.dims)
        return _HEADER + "\n".join(text) + "\n"

    def write_outputs(self, carries: dict) -> None:
        """The step's ys into their slab rows, the live carries swapped; `self.final`: the
        lines after the loop writing the final carries."""
        g, nl = self.graph, len(self.live)
        c_sizes = [math.prod(i.shape) for i in g.inputs[: self.nc]]
        y_shapes = [o.shape for o in g.outputs[nl:]]
        c_total, y_total = sum(c_sizes), sum(math.prod(s) for s in y_shapes)
        self.step.insert(0, f"row = {c_total} + t * {y_total}")
        # the writes of the step's results in loops of their own: in one loop with the compute,
        # stores to the slab (which LLVM cannot tell apart from the buffers) made a (32, 256)
        # LSTM cell update ~4x slower
        self.flush()
        off = 0
        for j, (o, shape) in enumerate(zip(g.outputs[nl:], y_shapes)):
            v = self.vals[o]
            at = "row + " if self.layout is None else "{} + t * {} + ".format(*self.layout[0][j])
            self.emit(
                shape,
                lambda i, v=v, off=off, s=shape, at=at: (
                    [f"{self.slab}[{at}{0 if self.layout else off} + {flat(i, s)}] = {v.at(i)}"]
                ),
                [v],
            )
            off += math.prod(shape)
        swaps = []
        for j, k in enumerate(self.live):
            cur, nxt = carries[k]
            v = self.vals[g.outputs[j]]
            self.emit(cur.shape, lambda i, v=v, n=nxt: [f"{n.at(i)} = {v.at(i)}"], same=[v])
            swaps.append((cur.name, nxt.name))
        if swaps:
            left = ", ".join(f"{c}, {n}" for c, n in swaps)
            right = ", ".join(f"{n}, {c}" for c, n in swaps)
            self.statement(f"{left} = {right}")
        self.flush()
        self.final: list[str] = []
        finals: dict[tuple, list] = {}  # one loop per shape writes the final carries
        off = 0
        for k, node in enumerate(g.inputs[: self.nc]):
            src = carries[k][0] if k in carries else self.vals[node]
            finals.setdefault(node.shape, []).append(
                lambda i, v=src, off=off, s=node.shape: (
                    [f"{self.slab}[{off} + {flat(i, s)}] = {v.at(i)}"]
                )
            )
            off += c_sizes[k]
        for k, at in self.layout[1] if self.layout else ():  # shifted ys: the initial carries
            node = g.inputs[k]
            first = (
                self.firsts[k]
                if self.firsts is not None
                else Arr(f"arg{k}", node.shape, _dtype_name(node.dtype), empty="()")
            )
            finals.setdefault(node.shape, []).append(
                lambda i, v=first, at=at, s=node.shape: (
                    [f"{self.slab}[{at} + {flat(i, s)}] = {v.at(i)}"]
                )
            )
        for shape, bodies in finals.items():
            self.loops(self.final, shape, lambda i, b=bodies: [x for f in b for x in f(i)])

    def emit(
        self,
        shape: tuple,
        body: Callable,
        same=(),
        reads=(),
        writes: str | None = None,
        scatter: bool = False,
    ) -> None:
        """A loop nest over `shape` in the step running body(indices), merged into the open one
        when that has the same shape and writes nothing this one reads elsewhere than at the
        loop's own index (`same`: values read at the loop's index, `reads`: at others;
        `scatter`: `writes` is written at other indices than the loop's own). numba
        compiles each loop nest slowly (~0.1-0.3 s): fewer, longer loops compile faster."""
        g = self.group
        if g is None or g[0] != shape or not self._independent(g, shape, same, reads):
            self.flush()
            g = self.group = (shape, [], set(), set())
        g[1].append(body)
        if writes:
            g[3 if scatter else 2].add(writes)

    @staticmethod
    def _independent(group: tuple, shape: tuple, same, others) -> bool:
        written, scattered = group[2] | group[3], group[3]
        for v in others:
            if reads(v) & written:
                return False
        return all(
            not (reads(v) & written)
            or (not reads(v) & scattered and isinstance(v, Arr) and not v.lead and v.shape == shape)
            for v in same
        )

    def flush(self) -> None:
        if self.group is not None:
            body = lambda i, bodies=self.group[1]: [x for b in bodies for x in b(i)]
            self.loops(self.step, self.group[0], body, loop_count)
            self.group = None

    def statement(self, line: str) -> None:
        self.flush()
        self.step.append(line)

    def loops(self, lines: list[str], shape: tuple, body: Callable, counts=None) -> None:
        """A loop nest over `shape` (indices i0, i1, ...) around body(indices), the innermost
        loop's count as `counts(count, body's lines)` writes it (a step's: loop_count)."""
        idx = [f"i{d}" for d in range(len(shape))]
        inner, pad = body(idx), ""
        for d, s in enumerate(shape):
            count = counts(s, inner) if counts and d == len(shape) - 1 else s
            lines.append(f"{pad}for {idx[d]} in range({count}):")
            pad += "    "
        lines += [pad + line for line in inner]

    # ---- nodes ----------------------------------------------------------------------------

    def lower(self, n: Node) -> Val:
        dt = _dtype_name(n.dtype)
        ins = [self.vals[i] for i in n.inputs]
        a = n.attrs
        if n.op in _VIEWS:
            return self.view(n, ins[0], dt)
        if n.op == "constant":
            self.constants.append(np.array(n.value, dtype=n.dtype, order="C"))
            return Arr(f"const{len(self.constants) - 1}", n.shape, dt, empty="()")
        if n.op in ("zeros", "ones"):
            out = self.buffer(n.shape, dt, zero=True)
            if n.op == "ones":
                self.loops(self.setup, n.shape, lambda i: [f"{out.at(i)} = {_typed(dt, 1)}"])
            return out
        if n.op == "fused":
            return self.elementwise(n, a["program"], ins)
        if n.op == "matmul":
            return self.matmul(n, ins, dt)
        if n.op in ("sum", "sum_mul", "max"):
            return self.reduce_sum(n, ins, dt)
        if n.op == "concat":
            return self.concat(n, ins, dt)
        if n.op == "index_grad":
            return self.index_grad(n, ins[0], dt)
        from ..ops.registry import get_op

        if get_op(n.op).elementwise:
            program = ((n.op, tuple(range(len(ins))), tuple(sorted(a.items())), n.shape, n.dtype),)
            return self.elementwise(n, program, ins)
        raise Unsupported(f"op {n.op!r}")

    def view(self, n: Node, x: Val, dt: str) -> Val:
        op, a = n.op, n.attrs
        if op == "stop_gradient":
            return x
        if op == "transpose":
            axes = tuple(int(d) for d in a["axes"])

            def fn(idx: list[str]) -> list[str]:
                out = [""] * len(axes)
                for d, ax in enumerate(axes):
                    out[ax] = idx[d]
                return out

            base = x.arr()
            array = f"{base}.T" if base and len(axes) == 2 and axes == (1, 0) else None
            return View(x, n.shape, fn, array)
        if op == "getitem":
            return View(x, n.shape, getitem_map(a["index"], x.shape))
        if op == "reshape":
            base = x.arr() if isinstance(x, Arr) else None
            if base and base.startswith("arg"):  # an argument comes in any layout; numba
                # reshapes only what a view can express (a Fortran-ordered (T, B, D) x raised
                # NotImplementedError): a copy for those, the array itself when typed C
                base = f"np.ascontiguousarray({base})"
            array = f"{base}.reshape({tuple(n.shape)})" if base and n.shape else None
            return View(x, n.shape, reshape_map(x.shape, n.shape), array)
        shape = x.shape  # broadcast_to
        return View(x, n.shape, lambda idx: bcast(idx, shape, n.shape))

    def elementwise(self, n: Node, program: tuple, ins: list[Val]) -> Val:
        out = self.buffer(n.shape, _dtype_name(n.dtype))
        tag = self.fresh("")

        def body(idx: list[str]) -> list[str]:
            lines, loads, values = [], {}, []
            for j, (op, refs, attrs, _shape, dtype) in enumerate(program):
                dt = _dtype_name(dtype)
                xs = []
                for r in refs:
                    if r >= 0:
                        if r not in loads:
                            v = ins[r]
                            loads[r] = (f"l{tag}_{r}", v.dtype)
                            lines.append(f"l{tag}_{r} = {v.at(bcast(idx, v.shape, n.shape))}")
                        xs.append(loads[r])
                    else:
                        xs.append(values[-r - 1])
                casts = op in _CASTS_OPERANDS + ("where",) and dt != "bool"
                start = 1 if op == "where" else 0
                xs = [
                    f"np.{dt}({x})" if casts and k >= start and t != dt else x
                    for k, (x, t) in enumerate(xs)
                ]
                name = f"v{tag}_{j}"
                if op == "sigmoid":
                    lines += _sigmoid_lines(f"{tag}_{j}", xs[0], dt)
                elif op in vector_ops(dt):
                    lines += vector_ops(dt)[op](f"t{tag}_{j}", xs[0], name)
                elif op == "where":  # (a bool array's element is a uint8 here: != 0)
                    lines.append(f"{name} = {xs[1]} if {xs[0]} != 0 else {xs[2]}")
                else:
                    lines.append(f"{name} = {_scalar(op, xs, dict(attrs), dt)}")
                values.append((name, dt))
            return lines + [f"{out.at(idx)} = {values[-1][0]}"]

        same = [v for v in ins if v.shape == n.shape]
        self.emit(n.shape, body, same, [v for v in ins if v.shape != n.shape], out.name)
        return out

    def array_of(self, v: Val) -> str:
        """An array expression of v for np.dot (a copy into a buffer made once when v has
        no C or F array of its own)."""
        a = v.arr()
        if a is not None:
            return a
        buf = self.buffer(v.shape, v.dtype)
        self.emit(v.shape, lambda i: [f"{buf.at(i)} = {v.at(i)}"], [v], (), buf.name)
        return buf.name

    def matmul(self, n: Node, ins: list[Val], dt: str) -> Val:
        x, y = ins
        out = self.buffer(n.shape, dt)
        m, k, p = x.shape[-2], x.shape[-1], y.shape[-1]
        if len(n.shape) == 2 and len(x.shape) == len(y.shape) == 2 and m * k * p >= DOT_MIN:
            if dt != x.dtype or dt != y.dtype or dt == "bool":
                raise Unsupported(f"matmul of {x.dtype} and {y.dtype}")
            self.statement(f"np.dot({self.array_of(x)}, {self.array_of(y)}, {out.name})")
            return out
        zero = _typed(dt, 0)
        batch = n.shape[:-2]

        def body(idx: list[str]) -> list[str]:
            b, i, j = idx[:-2], idx[-2], idx[-1]
            xi = bcast(b + [i, "kk"], x.shape, n.shape[:-2] + (m, k))
            yi = bcast(b + ["kk", j], y.shape, n.shape[:-2] + (k, p))
            acc = f"acc{self.fresh('')}"
            return [
                f"{acc} = {zero}",
                f"for kk in range({k}):",
                f"    {acc} += {x.at(xi)} * {y.at(yi)}",
                f"{out.at(idx)} = {acc}",
            ]

        self.emit(batch + (m, p), body, (), [x, y], out.name)
        return out

    def reduce_sum(self, n: Node, ins: list[Val], dt: str) -> Val:
        """`sum` of ins[0], or `sum_mul`: the sum of ins[0] * ins[1] (one shape) with no
        product array, or `max` (NaN kept, as np.max: MaskZero's row test)."""
        axes = {int(d) for d in n.attrs["axis"]}
        keep = n.attrs["keepdims"]
        out = self.buffer(n.shape, dt)
        init = f"np.{dt}(-np.inf)" if n.op == "max" else _typed(dt, 0)
        self.emit(n.shape, lambda i: [f"{out.at(i)} = {init}"], (), (), out.name)

        def target(idx: list[str]) -> list[str]:
            if keep:
                return ["0" if d in axes else i for d, i in enumerate(idx)]
            return [i for d, i in enumerate(idx) if d not in axes]

        x = ins[0]
        cast = (lambda e: f"np.{dt}({e})") if x.dtype != dt else (lambda e: e)
        mul = n.op == "sum_mul"
        term = (lambda i: f"{x.at(i)} * {ins[1].at(i)}") if mul else (lambda i: x.at(i))
        o = lambda i: out.at(target(i))
        bigger = lambda i: [
            f"if {o(i)} == {o(i)} and not {o(i)} >= {x.at(i)}:",
            f"    {o(i)} = {x.at(i)}",
        ]
        add = lambda i: [f"{o(i)} += {cast(term(i))}"]
        self.emit(x.shape, bigger if n.op == "max" else add, list(ins), [out], out.name, True)
        return out

    def concat(self, n: Node, ins: list[Val], dt: str) -> Val:
        axis = int(n.attrs["axis"])
        out = self.buffer(n.shape, dt)
        off = 0
        for v in ins:

            def body(idx: list[str], v=v, off=off) -> list[str]:
                at = list(idx)
                at[axis] = f"{idx[axis]} + {off}" if off else idx[axis]
                return [f"{out.at(at)} = {v.at(idx)}"]

            self.emit(v.shape, body, [v], (), out.name, True)
            off += v.shape[axis]
        return out

    def index_grad(self, n: Node, x: Val, dt: str) -> Val:
        out = self.buffer(n.shape, dt, zero=True)  # the slots outside the index stay zero
        fn = getitem_map(n.attrs["index"], n.shape)
        self.emit(x.shape, lambda i: [f"{out.at(fn(i))} = {x.at(i)}"], [x], (), out.name, True)
        return out
