"""Lowering a planned graph to a program: straight-line Python over NumPy, one line per node
(its op's own lowering, ufunc or forward), planned values written into buffers allocated once
per program. Fused nodes and inline sigmoids are lowered by fused_lowering.py (optimisation
tier), which Program inherits."""

from __future__ import annotations

import builtins
import itertools
import re
import traceback
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import auto_choice, resolve_backend
from .dest_slots import DestSlots
from .donate import tail_matmul
from .fused_lowering import FusedLowering, fused_scratch, fused_slots
from .graph import Graph, Node
from .keep import allocator
from .memory import (
    DEFAULT_OPTIONS,
    BufferPlan,
    PlanOptions,
    concat_slots,
    is_view,
    plan_buffers,
)
from .numpy_quirks import NEGATIVE_OUT_BROKEN
from .ops.registry import PSEUDO, get_op
from .pack_scratch import loop_slots
from .view_strides import copy_roots, copying_reshapes

_program_ids = itertools.count()


@dataclass
class LoweringContext:
    """What an op's own lowering may ask of the compilation it is part of (a loop op compiles
    its body with the caller's pipeline and options): `passes` (None: the default pipeline),
    `options`, and `sub_reports`, where nested programs leave their reports (CompileReport.loops);
    `bodies`: id(scan attrs) -> (compiled body, fixed carries, loop Switch, LoopReport) of the
    loops lowered to numba loop kernels (a whole-program kernel inlines them: numba_program.py);
    `xs_in_slab`: id(attrs) of loop nodes whose inputs may lie in the rows of their result
    (plan.slab_roots: the loop's runner must read a row before writing it)."""

    passes: Any = None
    options: PlanOptions = DEFAULT_OPTIONS
    sub_reports: list = field(default_factory=list)
    bodies: dict = field(default_factory=dict)
    xs_in_slab: set = field(default_factory=set)  # id(attrs) of loops with inputs in their rows
    # (id(attrs), prologue Program) of loops whose packed panels may go into a `.grad`
    # (pack_scratch.py)
    loop_scratch: list = field(default_factory=list)
    # id(attrs) -> the scope of each loop node of the program: the module that made the loop
    # (a Sequencer's path), the one name reports give a loop (LoopReport.scope, layout notes)
    loop_scopes: dict = field(default_factory=dict)


_LOWERING: ContextVar[LoweringContext | None] = ContextVar("tapernn_lowering", default=None)
# who makes a program's buffers (else np.empty each; set only while one is compiled): a split
# loop's halves carve theirs from the full body's (scan_split.BufferPool);
# `provider(plan.buffers)` -> arrays or None
GIVEN_BUFFERS: ContextVar[Any] = ContextVar("tapernn_given_buffers", default=None)


def nested() -> bool:
    """True while a program is being generated (a loop body's compile is nested in it)."""
    return _LOWERING.get() is not None


def lowering_context() -> LoweringContext:
    """The LoweringContext of the program being generated (a default one outside any)."""
    ctx = _LOWERING.get()
    return ctx if ctx is not None else LoweringContext()


class Program(FusedLowering, DestSlots):
    """Generated source for one graph plus the values it closes over.

    Every name the program uses (NumPy functions, op forwards, constants, preallocated
    buffers, index tuples) is bound as a keyword-only default, so a call does local-variable
    lookups and NumPy calls only. Planned values are written into their buffers with `out=`;
    values the plan puts in place (over a dead input, or over a dead region of a larger value
    through a view) into that input's array; concat pieces into their slot of the concat.
    Graph outputs live in storage allocated on every call (or are copied when they alias an
    input or a buffer), so results handed to callers are never overwritten by the next call;
    a large one is the previous call's array again once nothing else references it (keep.py).
    `buffers`: the plan's buffers, made by the caller (views of an arena shared with programs
    that never run at the same time, arena.py); else allocated here. `written`: positions of
    outputs the caller gives arrays for (a loop body's ys: its rows of the slab), passed after
    the inputs in that order; they are computed into those arrays (or copied there when their
    storage is not their own) and not returned.
    """

    def __init__(
        self,
        graph: Graph,
        fn_name: str = "program",
        buffers: list[np.ndarray] | None = None,
        plan: BufferPlan | None = None,
        options: PlanOptions = DEFAULT_OPTIONS,
        passes: Any = None,
        written: tuple[int, ...] = (),
    ):
        # the "auto" backend's choice for this program (top-level only: a loop body follows it)
        self.backend_note = ""
        self.top = not nested()  # (not a loop body)
        if self.top:
            options, self.backend_note = auto_choice(graph, options)
        self.graph, self.options, self.written = graph, options, tuple(written)
        self.plan = plan or plan_buffers(graph, scratch=fused_scratch, options=options)
        provider = GIVEN_BUFFERS.get() if buffers is None else None
        if provider is not None:
            buffers = provider(self.plan.buffers)
        self.given_buffers = buffers  # the plan's buffers made by the caller (arena.py), or None
        self.filename = f"<tapernn program {next(_program_ids)}>"
        self.bound: dict[str, Any] = {"np_array": np.array, "np_asarray": np.asarray}
        self.line_nodes: dict[int, Node] = {}
        self.kernels = self.plan.stats.kernels
        self.fused_kernels: dict[tuple, tuple[str, list[str], str]] = {}
        self.keepers: list = []  # keep.Keeper of the large per-call arrays
        self.backend = resolve_backend(options.backend)
        self.compiled_kernels: dict[int, str] = {}  # id(numba kernel) -> its bound name
        self.sites: list[tuple[str, Any, str, list[str], bool]] = []  # fused_lowering's
        self.kernel_plans: dict = {}  # numba_backend.plan_kernel's memo for this program
        self.fallbacks: list[str] = []  # fused groups the numba backend left to NumPy, and why
        self.sub_reports: list = []  # reports of nested programs (loop bodies)
        self.bodies: dict = {}  # LoweringContext.bodies
        ctx = LoweringContext(passes, options, self.sub_reports, self.bodies)
        ctx.loop_scopes = {id(n.attrs): n.scope for n in graph.nodes if n.op == "scan"}
        token = _LOWERING.set(ctx)
        try:
            self.source = self._generate(fn_name)
        finally:
            _LOWERING.reset(token)
        # the loops' packed panels made in the weights' zeroed `.grad` (pack_scratch.py)
        self.loop_scratch = (
            loop_slots(graph, ctx.loop_scratch, self.scratch_slots, self.plan, self.dest_slots)
            if self.top and ctx.loop_scratch
            else {}
        )
        namespace: dict[str, Any] = {}
        exec(builtins.compile(self.source, self.filename, "exec"), namespace)  # noqa: S102 (our source)
        for name, used, _ in self.fused_kernels.values():
            self.bound[name] = kernel = namespace[name]
            kernel.__kwdefaults__ = {u: self.bound[u] for u in used}
        self.fn = namespace[fn_name]
        if self.sites:  # numba kernels' call sites (fused_lowering.py)
            self._make_sites()
        self.fn.__kwdefaults__ = dict(self.bound)

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
        self.arrays = (
            self.given_buffers
            if self.given_buffers is not None
            else [np.empty(size, dtype) for size, dtype in self.plan.buffers]
        )
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
            expr += (
                f"[{self.bind('i', arg)}]"
                if kind == "getitem"
                else f".reshape({self.bind('s', arg)})"
            )
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
        if n in plan.slab_roots:  # allocated before its placed input (roots_at)
            return self.slab_out[n]
        if n in plan.tail_of:  # over a donated loop's dead rows (donate.tail_gemms)
            inp, off = plan.tail_of[n]
            shape = self.bind("s", n.shape)
            body.append(f"    o{self.pos[n]} = {names[inp]}[{off}:{off + n.size}].reshape({shape})")
            return f"o{self.pos[n]}"
        if n in plan.donated:  # the leading elements of an input (donate.py)
            body.append(f"    o{self.pos[n]} = {names[plan.donated[n]]}[:{n.size}]")
            ctx = _LOWERING.get()
            if ctx is not None:  # (its runner checks every call that its xs rows lie in its rows)
                ctx.xs_in_slab.add(id(n.attrs))
            return f"o{self.pos[n]}"
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
            # (a slice assignment: np.copyto's Python-level dispatch costs ~1 us more per call)
            body.append(f"    {names[n]}[{self.bind('i', index)}] = {names[piece]}")
            self.line_nodes[len(body) + 1] = n

    def _generate(self, fn_name: str) -> str:
        g, plan = self.graph, self.plan
        views = self._buffer_views()
        names: dict[Node, str] = {n: f"a{k}" for k, n in enumerate(g.inputs)}
        self.pos = {n: k for k, n in enumerate(g.nodes)}
        dead_after = _fresh_deaths(g, plan)
        # value -> the array object it is every call (computed by a ufunc into a buffer bound
        # once): its views are made once too (_static_view)
        static: dict[Node, np.ndarray] = {}
        special = {
            n
            for n in g.nodes
            if n.op == "fused"
            or n.op == "sigmoid"
            and self.options.inline_sigmoid
            or self.backend == "numba"
            and self.numba_lone(n)
        }
        uses = self._prepare_special(g) if special else {}
        body: list[str] = []
        claimed = self._claim_written()
        into = self._dest_slots(claimed, special)
        roots_at: dict[int, list[Node]] = {}
        self.slab_out: dict[Node, str] = {}  # a loop's array, made before its placed input
        for r in plan.placed_concats | plan.slab_roots:
            if r not in plan.placed:
                roots_at.setdefault(plan.alloc_at[r], []).append(r)
        for k, n in enumerate(g.nodes):
            if n.op == "input":
                continue
            if n.op == "constant":  # an array (a NumPy scalar's 0-d array: numba indexes it)
                names[n] = self.bind("c", np.asarray(n.value))
                continue
            for r in roots_at.get(k, ()):
                if r in claimed:  # a concat computed into the caller's array
                    names[r] = claimed[r]
                elif r in plan.fresh:  # returned: allocated per call, before its first piece
                    names[r] = f"v{self.pos[r]}"
                    # (a large one: the previous call's array again when it is free, keep.py)
                    keeper = allocator(r.nbytes)
                    if keeper is None:
                        empty = self._named("np_empty", np.empty)
                    else:
                        empty = self.bind("keep", keeper)
                        self.keepers.append(keeper)
                    alloc = f"{empty}({self.bind('s', r.shape)}, {self.bind('d', r.dtype)})"
                    if r in into:  # (the caller's array, if it gave one)
                        body.append(f"    {names[r]} = _dest[{into[r]}]")
                        body.append(f"    if {names[r]} is None:")
                        body.append(f"        {names[r]} = {alloc}")
                    else:
                        body.append(f"    {names[r]} = {alloc}")
                else:
                    names[r] = views[(plan.buffer_of[r], r.shape)]
                if r in plan.slab_roots:
                    self.slab_out[r] = names[r]
                    ctx = _LOWERING.get()
                    if ctx is not None:  # (its lowering must expect its inputs in its rows)
                        ctx.xs_in_slab.add(id(r.attrs))
            if n in plan.placed_concats:
                self._placed_concat(n, names, views, body)
            elif n.inputs and n.inputs[0] in static and self._static_view(n, static, names):
                pass  # (a view of a buffer, made once: bound, no line)
            else:
                names[n] = f"v{k}"
                out = self._out(n, names, views, body)
                if out is None and n in claimed:
                    out = claimed[n]
                if out is None and n in into:  # (None at run time: allocated by the ufunc)
                    out = f"_dest[{into[n]}]"
                args = [names[i] for i in n.inputs]
                lines = (
                    self._special_lines(n, args, out, views, names[n], uses)
                    if n in special
                    else None
                )
                if n in plan.tail_of:  # (row blocks from the end: the program's np_matmul)
                    mm = self._named("np_matmul", np.matmul)
                    tail = self._named("tail_matmul", tail_matmul)
                    lines = [f"{tail}({args[0]}, {args[1]}, {out}, {mm})"]
                if lines is None:
                    lines = [self._call(n.op, args, n.attrs, out, n.dtype)]
                if out is None and n.shape == ():
                    # NumPy hands back 0-d results as scalars, which no later line could
                    # write into (in place, out=): keep every value an array
                    lines[-1] = f"np_asarray({lines[-1]})"
                _note_static(n, out, lines, static, self.bound, plan)
                lines[-1] = f"{names[n]} = {lines[-1]}"
                for line in lines:
                    body.append("    " + line)
                    self.line_nodes[len(body) + 1] = n  # +1: the def line
            dead = [names[d] for d in dead_after.get(k, ()) if names[d].startswith("v")]
            if dead:
                body.append(f"    del {', '.join(dead)}")
        alias = set(g.meta.outputs_may_alias_inputs)
        given = {k: f"w{j}" for j, k in enumerate(self.written)}
        for k, w in given.items():
            if w not in claimed.values():  # not its own storage: copied into the caller's array
                body.append(f"    {w}[...] = {names[g.outputs[k]]}")
        results = [
            _owned(n, names[n], plan, k in alias) for k, n in enumerate(g.outputs) if k not in given
        ]
        body.append(f"    return ({', '.join(results)}{',' if len(results) == 1 else ''})")
        params = [names[n] for n in g.inputs] + list(given.values()) + ["*"] + list(self.bound)
        source = "\n".join([f"def {fn_name}({', '.join(params)}):"] + body) + "\n"
        return source + "".join("\n\n" + text for _, _, text in self.fused_kernels.values())

    def _static_view(self, n: Node, static: dict, names: dict) -> bool:
        """Bind view `n` of a static value (a buffer's array) once as its own name, when it is a
        true view (a basic index, a reshape NumPy does without a copy, a transpose): a step of a
        rolled loop took each such view of its gate buffer every step (~0.17 us each)."""
        if n.op not in _STATIC_VIEWS or len(n.inputs) != 1 or n in self.plan.placed:
            return False
        base = static[n.inputs[0]]
        try:
            arr = get_op(n.op).forward(base, **n.attrs)
        except (TypeError, ValueError, IndexError):
            return False
        if (
            not isinstance(arr, np.ndarray)
            or arr.shape != n.shape
            or arr.dtype != n.dtype
            or arr.base is None
            or not np.shares_memory(arr, base)
        ):
            return False
        static[n] = arr
        names[n] = self.bind("r", arr)
        return True

    def _claim_written(self) -> dict[Node, str]:
        """Storage -> the caller's array ("w<j>") it is computed into: a written output whose
        storage is its own, allocated per call by an op that takes `out=` (or a placed concat),
        of its shape and dtype; one output per storage."""
        g, plan = self.graph, self.plan
        claimed: dict[Node, str] = {}
        for j, k in enumerate(self.written):
            n = g.outputs[k]
            st = plan.storage.get(n)
            if (
                n.op in PSEUDO
                or is_view(n)
                or n.shape == ()
                or st is None
                or st in claimed
                or st not in plan.fresh
                or st in plan.placed
                or (st.shape, st.dtype) != (n.shape, n.dtype)
                or not (st in plan.placed_concats or get_op(st.op).supports_out)
                or not _over_itself(n, st, plan)
            ):
                continue
            claimed[st] = f"w{j}"
        return claimed

    def _call(self, op: str, args: list[str], attrs: dict, out: str | None, dtype=None) -> str:
        """One op's call expression, as its OpDef says: its own lowering, a direct call of its
        NumPy ufunc (no wrapper frame), or a call of its forward. A negation into out= where
        NumPy gets that wrong (numpy_quirks) is a multiplication by -1 of the value's dtype."""
        opdef = get_op(op)
        if opdef.lower is not None:
            return opdef.lower(args, attrs, out, self._bind_for_lowering)
        tail = f", out={out}" if out else ""
        if op == "neg" and out and NEGATIVE_OUT_BROKEN and dtype is not None:
            multiply = self._named("np_multiply", np.multiply)
            # (unsigned: -1 wraps to the dtype's largest value, and x * 255 is -x mod 256)
            minus_one = np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else -1.0
            return f"{multiply}({args[0]}, {self._scalar(minus_one, dtype)}{tail})"
        if opdef.ufunc is not None:
            return f"{self._named('np_' + op, opdef.ufunc)}({', '.join(args)}{tail})"
        fn = self._named(f"f_{op}", opdef.forward)
        kw = [f"{key}={self.bind('k', v)}" for key, v in attrs.items()]
        return f"{fn}({', '.join(args + kw)}{tail})"

    def _bind_for_lowering(self, name: str, value: Any, fixed: bool = False) -> str:
        return self._named(name, value) if fixed else self.bind(name, value)

    def failing_node(self, exc: BaseException) -> Node | None:
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            if frame.f_code.co_filename == self.filename:
                return self.line_nodes.get(lineno)
        return None


def _over_itself(n: Node, st: Node, plan) -> bool:
    """Whether `n` is its storage `st`'s array itself: st, or computed in place over values
    that are (not over a view of it: a transpose of a square st has its shape, not its
    layout, so the caller's array would hold it transposed)."""
    while n is not st:
        n = plan.inplace.get(n)
        if n is None:
            return False
    return True


_STATIC_VIEWS = ("getitem", "reshape", "transpose")
_UFUNC_OUT = re.compile(r"(?:(\w+) = )?(np_\w+)\(.*, out=(\w+)\)")


def _note_static(n: Node, out: str | None, lines: list, static: dict, bound: dict, plan) -> None:
    """Record `n` as static when its value is, every call, the array object bound as `out` (or
    a static value it is computed in place over): its lines are NumPy ufunc calls with out=
    (a ufunc returns its `out`), the last one's out that array."""
    if out is None:
        return
    if isinstance(bound.get(out), np.ndarray):
        target = bound[out]
    elif n in plan.inplace and plan.inplace[n] in static:
        target = static[plan.inplace[n]]
    else:
        return
    same = {out}  # (names known to be the target object: a fused group's lines chain them)
    for line in lines:
        m = _UFUNC_OUT.fullmatch(line.strip())
        if m is None or not isinstance(bound.get(m.group(2)), np.ufunc) or m.group(3) not in same:
            return
        if m.group(1):
            same.add(m.group(1))
    if (target.shape, target.dtype) == (n.shape, n.dtype):
        static[n] = target


def _fresh_deaths(g: Graph, plan: BufferPlan) -> dict[int, list[Node]]:
    """Schedule index -> per-call values (and views of them) read for the last time there:
    `del` them so NumPy can recycle their memory. Planned buffers persist, and so do inputs and
    constants: their values and views need no `del` (it would free nothing; a long program had
    hundreds of such lines, each compiled), except the copies reshapes of their strided views
    make (view_strides.py) and the views of those."""
    keep = set(g.outputs)
    last: dict[Node, int] = {}
    for k, n in enumerate(g.nodes):
        for i in n.inputs:
            last[i] = k
    copied = copy_roots(g, copying_reshapes(g))
    out: dict[int, list[Node]] = {}
    for value, k in last.items():
        root = plan.root.get(value, value)
        if value not in keep and (
            value in copied or root.op not in ("input", "constant") and root not in plan.buffer_of
        ):
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
