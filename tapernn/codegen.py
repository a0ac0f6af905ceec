"""Lowering a planned graph to a program: straight-line Python over NumPy, one line per node
(a fused node: one line per instruction, or -- when the same fused program on large values
recurs at least PlanOptions.kernel_min_uses times, as in every step of a long unrolled loop -- one call of
a function made once for it), planned values written into buffers allocated once per program.
"""
from __future__ import annotations

import builtins
import itertools
import math
import re
import traceback
from typing import Any

import numpy as np

from .backends import resolve_backend
from .graph import Graph, Node
from .memory import BufferPlan, plan_buffers
from .ops.fused import temp_slots
from .ops.registry import get_op
from .regions import DEFAULT_OPTIONS, PlanOptions, concat_slots

_program_ids = itertools.count()

# sigmoids on at most this many elements are lowered inline through logaddexp (four calls,
# Program._sigmoid_lines); larger ones through 1 / (1 + exp(min(-a, L))) (five calls, each
# cheaper per element), or, where a tail reader reads them, the exact op
EXACT_SIGMOID_INLINE_SIZE = 128

# ops whose result depends on the relative precision of a small sigmoid beyond what an
# underflowing exp keeps (log(sigmoid(a)) for a < -88 in float32): their sigmoid operands
# keep an unclamped exact form
_TAIL_READERS = ("log", "div", "power")


def sigmoid_exp_limit(dtype) -> float:
    """The clamp of -a in the inline sigmoid 1 / (1 + exp(min(-a, limit))): exp(limit) is
    finite in `dtype` (no overflow warning), and sigma(-limit) is below the smallest normal
    number, so clamping changes a result by less than that (88.72 for float32)."""
    return math.floor(math.log(float(np.finfo(dtype).max)) * 100) / 100


class Program:
    """Generated source for one graph plus the values it closes over.

    Every name the program uses (NumPy functions, op forwards, constants, preallocated
    buffers, index tuples) is bound as a keyword-only default, so a call does local-variable
    lookups and NumPy calls only. Planned values are written into their buffers with `out=`;
    values the plan puts in place (over a dead input, or over a dead region of a larger value
    through a view) into that input's array; concat pieces into their slot of the concat.
    Graph outputs live in storage allocated on every call (or are copied when they alias an
    input or a buffer), so results handed to callers are never overwritten by the next call.
    Buffers may be views of an arena shared with programs that never run at the same time.
    """

    def __init__(self, graph: Graph, fn_name: str = "program",
                 arena: np.ndarray | None = None, plan: BufferPlan | None = None,
                 options: PlanOptions = DEFAULT_OPTIONS):
        self.graph, self.options = graph, options
        self.plan = plan or plan_buffers(graph, scratch=fused_scratch, options=options)
        self.arena_arrays = arena_views(arena, self.plan.buffers) if arena is not None else None
        self.filename = f"<tapernn program {next(_program_ids)}>"
        self.bound: dict[str, Any] = {"np_array": np.array, "np_asarray": np.asarray}
        self.line_nodes: dict[int, Node] = {}
        self.kernels = self.plan.kernels
        self.fused_kernels: dict[tuple, tuple[str, list[str], str]] = {}
        self.backend = resolve_backend(options.backend)
        self.compiled_kernels: dict[int, str] = {}  # id(numba kernel) -> its bound name
        self.sites: list[tuple[str, Any, str, list[str]]] = []  # see _compiled_call
        self.fallbacks: list[str] = []  # fused groups the numba backend left to NumPy, and why
        self.source = self._generate(fn_name)
        namespace: dict[str, Any] = {}
        exec(builtins.compile(self.source, self.filename, "exec"), namespace)
        for name, used, _ in self.fused_kernels.values():
            self.bound[name] = kernel = namespace[name]
            kernel.__kwdefaults__ = {u: self.bound[u] for u in used}
        self.fn = namespace[fn_name]
        self._make_sites()
        self.fn.__kwdefaults__ = dict(self.bound)

    def _make_sites(self) -> None:
        """The numba kernels compiled in the background: each call site is a Site running the
        group's NumPy function until the worker swaps the kernel into the site's bound name."""
        from .backends.background import Site
        sites = []
        for name, handle, fused, temps in self.sites:
            site = Site(handle, self.bound[fused], [self.bound[t] for t in temps])
            site.attach(self.fn, name)
            self.bound[name] = site
            sites.append(site)
        self.site_objects = sites

    def bind(self, prefix: str, value: Any) -> str:
        name = f"{prefix}{len(self.bound)}"
        self.bound[name] = value
        return name

    def _named(self, name: str, value: Any) -> str:
        bound = self.bound.setdefault(name, value)
        if bound is not value and value is not None and bound != value:
            raise ValueError(f"code generator: the name {name!r} is bound to another value")
        return name

    def _buffer_views(self) -> dict[tuple[int, tuple], str]:
        """One array object per (buffer, shape), made once: values of different shapes but
        equal size share a buffer through reshaped views."""
        self.arrays = self.arena_arrays if self.arena_arrays is not None else [
            np.empty(size, dtype) for size, dtype in self.plan.buffers]
        wanted = [(b, n.shape) for n, b in self.plan.buffer_of.items()]
        for n, temps in self.plan.scratch_of.items():
            wanted += [(b, shape) for b, (shape, _) in zip(temps, fused_slots(n)[1])]
        views: dict[tuple[int, tuple], str] = {}
        for b, shape in wanted:
            if (b, shape) not in views:
                views[(b, shape)] = self.bind("b", self.arrays[b].reshape(shape))
        return views

    def _slot(self, n: Node, names: dict, body: list) -> str:
        """The array a placed value is computed into: its slot of a preallocated concat (bound
        once), or of a concat allocated this call (sliced on every call, into a local)."""
        root, steps = self.plan.placed[n]
        if root in self.plan.buffer_of:
            arr = self.arrays[self.plan.buffer_of[root]].reshape(root.shape)
            for kind, arg in steps:
                arr = arr[arg] if kind == "getitem" else arr.reshape(arg)
            return self.bind("r", arr)
        expr = names[root]
        for kind, arg in steps:
            expr += f"[{self.bind('i', arg)}]" if kind == "getitem" \
                else f".reshape({self.bind('s', arg)})"
        body.append(f"    o{self.pos[n]} = {expr}")
        return f"o{self.pos[n]}"

    def _out(self, n: Node, names: dict, views: dict, body: list) -> str | None:
        plan = self.plan
        if n in plan.inplace:
            return names[plan.inplace[n]]
        if n in plan.placed:
            return self._slot(n, names, body)
        if n in plan.buffer_of:
            return views[(plan.buffer_of[n], n.shape)]
        return None

    def _placed_concat(self, n: Node, names: dict, views: dict, body: list) -> None:
        """A concat some of whose pieces were computed into its slots: name its array, copy the
        pieces that were not."""
        plan = self.plan
        if n in plan.placed:
            names[n] = self._slot(n, names, body)
        elif n in plan.buffer_of:
            names[n] = views[(plan.buffer_of[n], n.shape)]
        for j, piece, index in concat_slots(n):
            if (n, j) in plan.placed_slots:
                continue
            copyto = self._named("np_copyto", np.copyto)
            body.append(f"    {copyto}({names[n]}[{self.bind('i', index)}], {names[piece]})")
            self.line_nodes[len(body) + 1] = n

    def _generate(self, fn_name: str) -> str:
        g, plan = self.graph, self.plan
        views = self._buffer_views()
        self.exact_sigmoid = {i for n in g.nodes if n.op in _TAIL_READERS for i in n.inputs}
        names: dict[Node, str] = {n: f"a{k}" for k, n in enumerate(g.inputs)}
        self.pos = {n: k for k, n in enumerate(g.nodes)}
        dead_after = _fresh_deaths(g, plan)
        uses: dict[tuple, int] = {}
        for n in g.nodes:
            if n.op == "fused":
                key = self._kernel_key(n)
                uses[key] = uses.get(key, 0) + 1
        body: list[str] = []
        roots_at: dict[int, list[Node]] = {}
        for r in plan.placed_concats:
            if r not in plan.placed:
                roots_at.setdefault(plan.alloc_at[r], []).append(r)
        for k, n in enumerate(g.nodes):
            if n.op == "input":
                continue
            if n.op == "constant":  # an array (a NumPy scalar's 0-d array: numba indexes it)
                names[n] = self.bind("c", np.asarray(n.value))
                continue
            for r in roots_at.get(k, ()):
                if r in plan.fresh:  # returned: allocated per call, before its first piece
                    names[r] = f"v{self.pos[r]}"
                    empty = self._named("np_empty", np.empty)
                    body.append(f"    {names[r]} = {empty}({self.bind('s', r.shape)}, "
                                f"{self.bind('d', r.dtype)})")
                else:
                    names[r] = views[(plan.buffer_of[r], r.shape)]
            if n in plan.placed_concats:
                self._placed_concat(n, names, views, body)
            else:
                names[n] = f"v{k}"
                out = self._out(n, names, views, body)
                args = [names[i] for i in n.inputs]
                compiled = self._compiled_call(n, args, out, views) if n.op == "fused" \
                    and self.backend == "numba" else None
                if compiled is not None:
                    lines = [compiled]
                elif n.op == "fused" and uses[self._kernel_key(n)] >= self.options.kernel_min_uses \
                        and n.size >= self.options.kernel_min_size:
                    kernel = self._fused_kernel(n)
                    operands = args + self._temps(n, views) + ([out] if out else [])
                    lines = [f"{kernel}({', '.join(operands)})"]
                elif n.op == "fused":
                    lines = self._fused_lines(n, args, out, self._temps(n, views), names[n])
                elif n.op == "sigmoid" and self._inline_sigmoid(n.shape, n in self.exact_sigmoid):
                    lines = self._sigmoid_lines(args[0], names[n], out, n.dtype, n.size <=
                                                EXACT_SIGMOID_INLINE_SIZE or n in self.exact_sigmoid)
                else:
                    lines = [self._call(n.op, args, n.attrs, out)]
                if out is None and n.shape == ():
                    # NumPy hands back 0-d results as scalars, which no later line could
                    # write into (in place, out=): keep every value an array
                    lines[-1] = f"np_asarray({lines[-1]})"
                lines[-1] = f"{names[n]} = {lines[-1]}"
                for line in lines:
                    body.append("    " + line)
                    self.line_nodes[len(body) + 1] = n  # +1: the def line
            dead = [names[d] for d in dead_after.get(k, ()) if names[d].startswith("v")]
            if dead:
                body.append(f"    del {', '.join(dead)}")
        alias = set(g.meta.outputs_may_alias_inputs)
        results = [_owned(n, names[n], plan, k in alias) for k, n in enumerate(g.outputs)]
        body.append(f"    return ({', '.join(results)}{',' if len(results) == 1 else ''})")
        params = [names[n] for n in g.inputs] + ["*"] + list(self.bound)
        source = "\n".join([f"def {fn_name}({', '.join(params)}):"] + body) + "\n"
        return source + "".join("\n\n" + text for _, _, text in self.fused_kernels.values())

    def _compiled_call(self, n: Node, args: list[str], out: str | None,
                       views: dict) -> str | None:
        """A call of n's numba kernel (backends/numba_backend.py) writing `out` (or an array
        allocated per call), or None when the group falls back to the NumPy lowering (the
        reason is kept in self.fallbacks and shown in the CompileReport). 0-d operands are
        passed as arrays (a 0-d result of a reduction may be a NumPy scalar). With background
        compilation (backends/background.py) the call goes through a Site, a bound name the
        worker thread rebinds to the kernel once it is compiled."""
        from .backends import background, numba_backend
        operands = [(i.shape, i.dtype) for i in n.inputs]
        later = background.enabled()
        handle, why = numba_backend.plan_kernel(n.attrs["program"], operands, n.shape, n.dtype,
                                                background=later)
        if handle is None:
            ops = "+".join(ins[0] for ins in n.attrs["program"])
            self.fallbacks.append(f"{ops}: {why}")
            return None
        if later:
            name = self.bind("nks", None)  # the Site, made once the program exists
            self.sites.append((name, handle, self._fused_kernel(n, with_out=True),
                               self._temps(n, views)))
            self.compiled_kernels.setdefault(id(handle), "")
        else:
            name = self.compiled_kernels.get(id(handle))
            if name is None:
                name = self.compiled_kernels[id(handle)] = self.bind("nk", handle.kernel)
        args = [f"np_asarray({a})" if i.shape == () and i.op != "constant" else a
                for a, i in zip(args, n.inputs)]
        if out is None:
            out = f"{self._named('np_empty', np.empty)}({self.bind('s', n.shape)}, " \
                  f"{self.bind('d', n.dtype)})"
        return f"{name}({', '.join(args + [out])})"

    def _call(self, op: str, args: list[str], attrs: dict, out: str | None) -> str:
        """One op's call expression, as its OpDef says: its own lowering, a direct call of its
        NumPy ufunc (no wrapper frame), or a call of its forward."""
        opdef = get_op(op)
        if opdef.lower is not None:
            return opdef.lower(args, attrs, out, self._bind_for_lowering)
        tail = f", out={out}" if out else ""
        if opdef.ufunc is not None:
            return f"{self._named('np_' + op, opdef.ufunc)}({', '.join(args)}{tail})"
        fn = self._named(f"f_{op}", opdef.forward)
        kw = [f"{key}={self.bind('k', v)}" for key, v in attrs.items()]
        return f"{fn}({', '.join(args + kw)}{tail})"

    def _bind_for_lowering(self, name: str, value: Any, fixed: bool = False) -> str:
        return self._named(name, value) if fixed else self.bind(name, value)

    def _temps(self, n: Node, views: dict) -> list[str]:
        """The names of a fused node's preallocated temporaries (in slot order)."""
        slots = fused_slots(n)[1]
        return [views[(b, s)] for b, (s, _) in zip(self.plan.scratch_of.get(n, []), slots)]

    def _kernel_key(self, n: Node, with_out: bool = False) -> tuple:
        # what a fused node's lines depend on besides its operand and buffer names
        plan = self.plan
        has_out = with_out or n in plan.inplace or n in plan.placed or n in plan.buffer_of
        return (n.attrs["program"], has_out, n in self.exact_sigmoid)  # (has_out: see _out)

    def _fused_kernel(self, n: Node, with_out: bool = False) -> str:
        """The name of a function running n's program (made once per program): a program met
        kernel_min_uses times or more (every step of a long unrolled loop) is compiled once
        instead of once per step -- its lines were most of a long program, and compiling the
        source a third of building it. The function takes the operands, the temporaries and
        the output buffer (when planned, or `with_out`). One call per use costs ~0.3 us: nothing
        next to the work on values of kernel_min_size elements or more, but a few percent of a
        tiny model's call, which keeps the lines inline."""
        key = self._kernel_key(n, with_out)
        if key not in self.fused_kernels:
            args = [f"x{k}" for k in range(len(n.inputs))]
            temps = [f"t{k}" for k in range(len(fused_slots(n)[1]))]
            out = ["out"] if key[1] else []
            lines = self._fused_lines(n, args, (out or [None])[0], temps, "r")
            lines[-1] = f"return {lines[-1]}"
            body = "\n".join("    " + line for line in lines)
            used = sorted(set(re.findall(r"[A-Za-z_]\w*", body)) & self.bound.keys())
            name = self._named(f"fused_kernel{len(self.fused_kernels)}", None)  # set after exec
            params = ", ".join(args + temps + out + ["*"] + used)
            self.fused_kernels[key] = (name, used, f"def {name}({params}):\n{body}\n")
        return self.fused_kernels[key][0]

    def _fused_lines(self, n: Node, args: list[str], out: str | None, temps: list[str],
                     result: str) -> list[str]:
        """The fused program inline: each instruction writes its preallocated temporary, the
        last one the node's output."""
        slot_of = fused_slots(n)[0]
        program = n.attrs["program"]
        exact = {-r - 1 for op, refs, *_ in program if op in _TAIL_READERS for r in refs if r < 0}
        if n in self.exact_sigmoid:
            exact.add(len(program) - 1)
        lines, results = [], []
        for j, (op, refs, attrs, shape, dtype) in enumerate(program):
            ins = [args[r] if r >= 0 else results[-r - 1] for r in refs]
            target = out if slot_of[j] is None else temps[slot_of[j]]
            if op == "sigmoid" and self._inline_sigmoid(tuple(shape), j in exact):
                # the last instruction's operand is a temporary dying here: all calls but the
                # last run in it, only the last writes out (which may be a strided region of
                # a larger storage, where a ufunc pays per row: 1 such call, not 4 or 5)
                work = ins[0] if out and slot_of[j] is None and refs[0] < 0 else None
                logaddexp = j in exact or math.prod(shape) <= EXACT_SIGMOID_INLINE_SIZE
                lines += self._sigmoid_lines(ins[0], target or result, target, dtype, logaddexp,
                                             work)
            else:
                lines.append(self._call(op, ins, dict(attrs), target))
            results.append(target)
        return lines

    @staticmethod
    def _inline_sigmoid(shape: tuple, exact: bool) -> bool:
        # (a 0-d sigmoid is one call of the op: a ufunc on a 0-d array returns a scalar,
        # which the later in-place lines could not write)
        return shape != () and (not exact or math.prod(shape) <= EXACT_SIGMOID_INLINE_SIZE)

    def _sigmoid_lines(self, x: str, name: str, out: str | None, dtype,
                       logaddexp: bool, work: str | None = None) -> list[str]:
        """A sigmoid as ufunc lines writing `name` in place (no temporaries, no call frame);
        the last line is a bare call: the caller prefixes the assignment. Both forms keep
        relative accuracy in both tails, in float32 and float64 (the tanh form 0.5 * tanh(0.5 *
        a) + 0.5 used for float32 before gave 0 below a = -17: Sigmoid -> BCE lost its
        gradient). Small values (or read by a tail reader): sigma(a) = exp(-log(1 + exp(-a))),
        four calls, unclamped: log(sigma(a)) keeps its digits down to the last subnormal, sigma
        itself has relative error ~ |a| * eps / 2 for |a| < 36 (under 20 ulps). Larger values:
        sigma(a) = 1 / (1 + exp(min(-a, L))), L = sigmoid_exp_limit(dtype): under 2 ulps
        wherever sigma(a) is a normal number, and faster per element than tanh or logaddexp.
        With `work` (a temporary the caller may overwrite) all calls but the last write it."""
        if logaddexp:
            calls = [("negative", "{}"), ("logaddexp", "0.0, {}"), ("negative", "{}"),
                     ("exp", "{}")]
        else:
            limit = repr(sigmoid_exp_limit(dtype))
            calls = [("negative", "{}"), ("minimum", "{}, " + limit), ("exp", "{}"),
                     ("add", "{}, 1.0"), ("divide", "1.0, {}")]
        lines = []
        for k, (op, operands) in enumerate(calls):
            fn = self._named(f"np_{op}", getattr(np, op))
            src = operands.format(x if k == 0 else work or name)
            if work is not None:
                lines.append(f"{fn}({src}, out={work if k < len(calls) - 1 else out})")
            elif k == 0 and name != out:  # fused temporaries are names of preallocated buffers
                lines.append(f"{name} = {fn}({src}{f', out={out}' if out else ''})")
            else:
                lines.append(f"{fn}({src}, out={name})")
        return lines

    def failing_node(self, exc: BaseException) -> Node | None:
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            if frame.f_code.co_filename == self.filename:
                return self.line_nodes.get(lineno)
        return None


_SLOTS: dict[tuple, tuple[list, list]] = {}


def fused_slots(n: Node) -> tuple[list, list]:
    """temp_slots of n's program, computed once per distinct program (the planner and the code
    generator ask for every fused node several times; every step has the same programs)."""
    program = n.attrs["program"]
    slots = _SLOTS.get(program)
    if slots is None:
        slots = temp_slots(program)
        if len(_SLOTS) < 10_000:
            _SLOTS[program] = slots
    return slots


def fused_scratch(n: Node) -> list[tuple[tuple, np.dtype]]:
    return fused_slots(n)[1] if n.op == "fused" else []


def _fresh_deaths(g: Graph, plan: BufferPlan) -> dict[int, list[Node]]:
    """Schedule index -> per-call values (and views of them) read for the last time there:
    `del` them so NumPy can recycle their memory. Planned buffers persist, and so do inputs and
    constants: their values and views need no `del` (it would free nothing; a long program had
    hundreds of such lines, each compiled)."""
    keep = set(g.outputs)
    last: dict[Node, int] = {}
    for k, n in enumerate(g.nodes):
        for i in n.inputs:
            last[i] = k
    out: dict[int, list[Node]] = {}
    for value, k in last.items():
        root = plan.root.get(value, value)
        if value not in keep and root.op not in ("input", "constant") \
                and root not in plan.buffer_of:
            out.setdefault(k, []).append(value)
    return out


def _owned(n: Node, name: str, plan: BufferPlan, may_alias_input: bool = False) -> str:
    # outputs aliasing an input, a constant or a preallocated buffer are copied: callers own
    # them. A value living in storage allocated fresh by this call (a returned value, the gate
    # activations computed in place over the fresh input projection and saved for backward, a
    # step's h written into its slot of the returned sequence) is the caller's already: no copy.
    # Outputs the graph's meta lets alias the inputs (probes of x[t]) are returned as views
    if not plan.copied(n, may_alias_input):
        return f"np_asarray({name})" if n.shape == () else name
    return f"np_array({name})"


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
