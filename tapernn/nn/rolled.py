"""Rolled step loops (issue 16): a Sequencer's steps are traced one by one, each as its own body
Graph (carried states, the step's data slices, invariants in), until two consecutive ones are
equal up to renaming; then the peeled steps are inlined and ONE `scan` runs the template over
the rest. A step's random masks and inputs (dropout, noise) are per-step inputs of the body:
a peeled step's are the model's own random inputs, a scan's one (n, ...) input per site drawn
at bind in the unrolled program's order (nn.step_draws). A step that reads its step
number, never settles or holds REINFORCE choices runs unrolled, the reason noted in the compile
report. Templates are cached per step signature, so a new length T re-emits them without
tracing a step again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import tracing
from ..errors import TapernnError
from ..graph import Graph
from ..scan import inline, scan
from ..tracing import Tape, Var
from .context import BuildContext
from .step_watch import StepNumber, plain, unwatched, watching
from .tree import flatten, unflatten

MAX_TRACED = 4  # steps traced looking for the period before running unrolled


class NotRollable(Exception):
    """Why a loop runs unrolled (the message goes to the compile report)."""


@dataclass(frozen=True)
class Stacked:
    """The probe steps of a scan: the module's steps start, start + stride, ... (n of them);
    the value is stacked over positions: the module's j-th step is row j (row n - 1 - j
    when `reverse`: a reverse loop runs its positions backwards)."""

    start: int
    n: int
    stride: int = 1
    reverse: bool = False

    def steps(self) -> list[int]:
        return [self.start + j * self.stride for j in range(self.n)]


@dataclass
class StepBody:
    """One traced step: its graph (inputs [carries] + [xs] + [invariants] + [parameters];
    outputs [new carries] + [ys]) and how its inputs and outputs map to the model."""

    graph: Graph
    carry_in: list  # (module, k) per carry input
    carry_out: list  # (module, k) per carry output
    n_xs: int
    params: list  # Parameters read (the last invariants), with their input names
    delegated: list  # (module, shapes, dtype): initial states made by the outer context
    out_tree: Any
    out_refs: list  # per output leaf: ("ys", j) or ("xs", j)
    probes: list  # (module, field, offset, tree, refs)
    step_calls: dict  # module -> steps it counted (BuildContext.next_step)
    scopes: dict
    sig: tuple = ()
    n_ys: int = 0
    randoms: list = field(default_factory=list)  # RandomSite per random input (after the xs)


@dataclass
class Template:
    """What a settled loop replays for any length: peeled steps, then the template scanned."""

    peeled: list
    body: StepBody
    notes: list = field(default_factory=list)


@dataclass(frozen=True)
class RandomSite:
    """A random input of a step body: a dropout mask (`p`, `rng` as BuildContext.random_mask
    takes them) or a drawn input (`draw`, `name`: BuildContext.random_input); `owner`: the
    module that asked (the step signature compares it, not the closures)."""

    shape: tuple
    dtype: Any
    owner: Any
    p: float | None = None
    rng: Any = None
    draw: Any = None
    name: str = "mask"

    def key(self) -> tuple:
        return (self.shape, self.dtype.str, id(self.owner), self.p, self.name)

    def emit(self, ctx: BuildContext) -> Var:
        """This site's input in `ctx`, as the unrolled trace makes it."""
        if self.draw is None:
            return ctx.random_mask(self.shape, self.p, self.dtype, self.rng)
        return ctx.random_input(self.shape, self.dtype, self.draw, self.name)


class _StepContext(BuildContext):
    """The build context of one step body: states of carried modules are body inputs; an initial
    state is made by the model's context (zeros or a state input) and carried in."""

    def __init__(self, tape: Tape, outer: BuildContext, carry_specs: list, steps: dict):
        super().__init__(tape, outer.training, history_mode=False)
        self.outer = outer
        self.stack = list(outer.stack)
        self.carry_nodes: list = []
        self.carry_in: list = []
        self.loop_scope = tracing.current_scope()
        self.delegated: list = []
        self.base = {m: plain(c) for m, c in steps.items()}
        # the module step counters: reading one (not just counting on) is a step-number read
        self.steps = {m: StepNumber(c) for m, c in self.base.items()}
        self.step_calls: dict = {}
        self.sites: list = []  # (body input Node, RandomSite), in draw order
        by_module: dict[Any, list] = {}
        for (m, k), (shape, dtype) in carry_specs:
            by_module.setdefault(m, []).append(self._carry(m, k, shape, dtype))
        self.states = {m: tuple(v) for m, v in by_module.items()}

    def _carry(self, m: Any, k: int, shape: tuple, dtype: Any) -> Var:
        var = self.tape.input(shape, dtype, name=f"carry{len(self.carry_nodes)}", kind="carry")
        var.node.scope = self.loop_scope  # made lazily inside a module or up front: the same
        self.carry_nodes.append(var.node)
        self.carry_in.append((m, k))
        return var

    def state_of(self, module: Any, shapes: list, dtype: Any) -> tuple:
        if module in self.states:
            return self.states[module]
        with unwatched(), self.outer.tape.recording():
            start = self.outer.state_of(module, shapes, dtype)
        self.delegated.append((module, [tuple(s) for s in shapes], dtype))
        state = tuple(self._carry(module, k, v.shape, v.dtype) for k, v in enumerate(start))
        self.states[module] = state
        return state

    def next_step(self, module: Any) -> int:
        t = plain(self.steps.get(module, 0))
        self.steps[module] = StepNumber(t + 1)
        self.step_calls[module] = self.step_calls.get(module, 0) + 1
        return StepNumber(t)

    def probe(self, module: Any, name: str, t: Any, value: Any) -> None:
        offset = None if t is None else plain(t) - self.base.get(module, 0)
        self.probes.append((module, name, offset, value))

    def random_mask(self, shape: tuple, p: float, dtype: Any, rng: Any = None) -> Var:
        site = RandomSite(tuple(shape), np.dtype(dtype), self._asker(), p=p, rng=rng)
        return self._random(site)

    def random_input(self, shape: tuple, dtype: Any, draw: Any, name: str) -> Var:
        site = RandomSite(tuple(shape), np.dtype(dtype), self._asker(), draw=draw, name=name)
        return self._random(site)

    def _asker(self) -> Any:
        return self.stack[-1] if self.stack else None

    def _random(self, site: RandomSite) -> Var:
        """A per-step input of the body (its value: the site drawn for that step)."""
        var = self.tape.input(
            site.shape, site.dtype, name=f"{site.name}{len(self.sites)}", kind="random"
        )
        self.sites.append((var.node, site))
        return var

    def per_forward(self, key: str, why: str) -> dict:
        raise NotRollable(why)  # (a step traced alone: a value per step, not per forward)

    def add_reinforce(self, module: Any, log_prob: Var) -> None:
        # each step's log-probability is a seeded output of its own (the backward seeds it
        # with -reward at that step: nn.reinforce), not a value a scan stacks
        raise NotRollable("REINFORCE choices are seeded per step")


def trace_step(
    call: Any,
    t: int,
    outer: BuildContext,
    carry_specs: list,
    xs_specs: list,
    inv_specs: list,
    steps: dict,
) -> tuple[StepBody, bool, dict]:
    """Trace `call(xs, invs)` as step t's body. Returns the body, whether the step read its
    step number, and the module step counts after it."""
    tape = Tape()
    ctx = _StepContext(tape, outer, carry_specs, steps)
    with tape.recording(), ctx, tracing.step(StepNumber(t)):
        xs = [tape.input(s, d, name=f"xs{j}", kind="xs") for j, (s, d) in enumerate(xs_specs)]
        invs = [
            tape.input(s, d, name=f"inv{j}", kind="invariant") for j, (s, d) in enumerate(inv_specs)
        ]
        with watching() as reads:
            try:
                out = call(xs, invs)
            except TapernnError as e:
                if "different graphs" in str(e):
                    raise NotRollable("the step reads a value computed outside it") from None
                raise
    body = _assemble(tape, ctx, out, xs, invs)
    for n in body.graph.nodes:
        n.step = plain(n.step)
    return body, bool(reads), {m: plain(c) for m, c in ctx.steps.items()}


def _assemble(tape: Tape, ctx: _StepContext, out: Any, xs: list, invs: list) -> StepBody:
    carry_out, carry_nodes = [], []
    for m, state in ctx.states.items():
        for k, v in enumerate(state):
            carry_out.append((m, k))
            carry_nodes.append(_own(v, tape).node)
    ys: list = []
    xs_at = {v.node: j for j, v in enumerate(xs)}

    def ref(v: Any) -> tuple:
        node = _own(v, tape).node
        if node in xs_at:  # the step's own input (a Sequencer's `inputs`): the caller's slice
            return ("xs", xs_at[node])
        if node not in ys:
            ys.append(node)
        return ("ys", ys.index(node))

    leaves, out_tree = flatten(out)
    out_refs = [ref(v) for v in leaves]
    probes = []
    for m, name, offset, value in ctx.probes:
        pl, pt = flatten(value)
        probes.append((m, name, offset, pt, [ref(v) for v in pl]))
    params = [(p, ctx.params[p].node.name) for p in ctx.param_order]
    inputs = (
        ctx.carry_nodes
        + [v.node for v in xs]
        + [n for n, _ in ctx.sites]
        + [v.node for v in invs]
        + [ctx.params[p].node for p in ctx.param_order]
    )
    others = [n for n in tape.graph.inputs if n not in set(inputs)]
    if others:
        raise NotRollable(f"the step makes inputs of kind {others[0].kind!r}")
    dtypes = {n.dtype for n in carry_nodes + ys}
    if len(dtypes) > 1 or any(d.kind != "f" for d in dtypes):
        raise NotRollable(
            f"the step's states and outputs are not of one float dtype "
            f"({sorted(str(d) for d in dtypes)})"
        )
    # inputs first, in role order (a lazily made carry input is not a different step)
    graph = Graph(
        inputs + [n for n in tape.graph.nodes if n.op != "input"], inputs, carry_nodes + ys
    )
    body = StepBody(
        graph,
        list(ctx.carry_in),
        carry_out,
        len(xs),
        params,
        ctx.delegated,
        out_tree,
        out_refs,
        probes,
        dict(ctx.step_calls),
        dict(ctx.scopes),
        n_ys=len(ys),
        randoms=[site for _, site in ctx.sites],
    )
    body.sig = _structure(body)
    return body


def _own(v: Any, tape: Tape) -> Var:
    if not isinstance(v, Var) or v.tape is not tape:
        raise NotRollable("the step returns or records a value computed outside it")
    return v


def _structure(b: StepBody) -> tuple:
    """The body up to renaming: ops, attributes, shapes, dtypes, wiring, scopes, constants, and
    the role of every input and output (which state, which parameter, which field)."""
    g = b.graph
    num = {n: k for k, n in enumerate(g.nodes)}
    rows = tuple(
        (
            n.op,
            n.attrs_key,
            n.shape,
            n.dtype.str,
            tuple(num[i] for i in n.inputs),
            n.scope,
            None if n.value is None else (n.value.dtype.str, n.value.shape, n.value.tobytes()),
        )
        for n in g.nodes
    )
    return (
        rows,
        tuple(num[i] for i in g.inputs),
        tuple(num[o] for o in g.outputs),
        tuple((id(m), k) for m, k in b.carry_in),
        tuple((id(m), k) for m, k in b.carry_out),
        tuple((id(p), name) for p, name in b.params),
        b.out_tree,
        tuple(b.out_refs),
        tuple((id(m), f, o, t, tuple(r)) for m, f, o, t, r in b.probes),
        tuple(sorted((id(m), c) for m, c in b.step_calls.items())),
        tuple(site.key() for site in b.randoms),
    )


def _carry_specs(b: StepBody) -> list:
    return [(mk, (n.shape, n.dtype)) for mk, n in zip(b.carry_out, b.graph.outputs)]


def find_period(
    call: Any, T: int, outer: BuildContext, xs_specs: list, inv_specs: list, carried: list
) -> tuple[list, StepBody | None]:
    """Trace steps 0, 1, ... until two consecutive bodies are equal: (peeled bodies, template),
    or with T too short to tell (every step traced), (all bodies, None). `carried`: the states
    ((module, k), Var) the loop starts from in the model's context."""
    specs = [(mk, (v.shape, v.dtype)) for mk, v in carried]
    steps = {m: c for m, c in outer.steps.items()}
    bodies: list[StepBody] = []
    for t in range(min(T, MAX_TRACED + 1)):
        body, read, steps = trace_step(call, t, outer, specs, xs_specs, inv_specs, steps)
        if read:
            raise NotRollable(
                f"step {t} reads its step number (tracing.current_step(), a "
                f"module's step counter): its graph may change at any step"
            )
        if bodies and body.sig == bodies[-1].sig and not body.delegated:
            prev = bodies.pop()
            if prev.carry_in != prev.carry_out or [
                n.shape for n in prev.graph.inputs[: len(prev.carry_in)]
            ] != [n.shape for n in prev.graph.outputs[: len(prev.carry_out)]]:
                raise NotRollable("the step changes its recurrent states' set or shapes")
            return bodies, prev
        bodies.append(body)
        specs = _carry_specs(body)
    if len(bodies) < T:
        raise NotRollable(
            f"the step graph did not repeat within steps 0..{len(bodies) - 1} "
            f"(Python control flow on the step number?)"
        )
    return bodies, None


# ---- emitting a loop into the model's graph ------------------------------------------------------


def _bind_as(ctx: BuildContext, p: Any, name: str) -> Var:
    """ctx.bind(p), named as the step bound it (the parameter's scope, not the loop's)."""
    var = ctx.params.get(p)
    if var is None:
        with tracing.step(None):
            var = ctx.tape.input(p.data.shape, p.data.dtype, name=name, kind="param")
        ctx.params[p] = var
        ctx.param_order.append(p)
    return var


def _enter(ctx: BuildContext, body: StepBody, t: int | None) -> list:
    """The body's carry inputs and invariants in the model's graph (replaying the initial
    states it made there and the parameters it bound)."""
    with tracing.step(t):
        for m, shapes, dtype in body.delegated:
            ctx.state_of(m, shapes, dtype)
    carries = [ctx.states[m][k] for m, k in body.carry_in]
    return carries, [_bind_as(ctx, p, name) for p, name in body.params]


def _leave(ctx: BuildContext, body: StepBody, carries: list) -> None:
    new: dict[Any, list] = {}
    for (m, _), v in zip(body.carry_out, carries):
        new.setdefault(m, []).append(v)
    for m, vs in new.items():
        ctx.states[m] = tuple(vs)
    for scope, what in body.scopes.items():
        ctx.scopes.setdefault(scope, what)


def emit_step(ctx: BuildContext, body: StepBody, t: int, xs_t: list, invs: list) -> Any:
    """Inline `body` as step t (xs_t: its data slices); returns the step's output."""
    carries, params = _enter(ctx, body, t)
    with tracing.step(t):
        drawn = [site.emit(ctx) for site in body.randoms]
        outs = inline(body.graph, carries + xs_t + drawn + invs + params)
    n = len(body.carry_out)
    _leave(ctx, body, outs[:n])

    def value(r: tuple) -> Var:
        return outs[n + r[1]] if r[0] == "ys" else xs_t[r[1]]

    for m, name, offset, tree, refs in body.probes:
        t_m = None if offset is None else ctx.steps.get(m, 0) + offset
        ctx.probe(m, name, t_m, unflatten(tree, [value(r) for r in refs]))
    for m, c in body.step_calls.items():
        ctx.steps[m] = ctx.steps.get(m, 0) + c
    return unflatten(body.out_tree, [value(r) for r in body.out_refs])


def emit_scan(
    ctx: BuildContext, body: StepBody, xs: list, invs: list, length: int, reverse: bool
) -> Any:
    """ONE scan of `body` over xs (each (length, ...)); returns the output stacked over the
    steps (row j: position j) and registers the probes stacked (nn.rolled.Stacked)."""
    carries, params = _enter(ctx, body, None)
    with tracing.step(None):
        drawn = ctx.step_randoms(body.randoms, length, reverse)
        res = scan(body.graph, carries, xs + drawn, invs + params, reverse=reverse, length=length)
    _leave(ctx, body, list(res.carries))

    def value(r: tuple) -> Var:
        return res.ys[r[1]] if r[0] == "ys" else xs[r[1]]

    for m, name, offset, tree, refs in body.probes:
        calls = body.step_calls.get(m, 0)
        at = (
            None
            if offset is None
            else Stacked(ctx.steps.get(m, 0) + offset, length, max(calls, 1), reverse)
        )
        ctx.probe(m, name, at, unflatten(tree, [value(r) for r in refs]))
    for m, c in body.step_calls.items():
        ctx.steps[m] = ctx.steps.get(m, 0) + c * length
    return unflatten(body.out_tree, [value(r) for r in body.out_refs])


def slice_rows(x: Var, start: int, stop: int) -> Var:
    if start == 0 and stop == x.shape[0]:
        return x
    with tracing.step(None):
        return x[start:stop]


def run_loop(
    ctx: BuildContext,
    key: Any,
    call: Any,
    T: int,
    xs: list,
    invs: list,
    xs_step: Any,
    reverse: bool = False,
) -> list:
    """Run `call(xs_t, invs)` over T steps rolled. xs: (T, ...) Vars; xs_step(t) -> the
    per-step slices (for peeled steps). Returns segments in step order: ("step", position,
    output) and ("scan", first position, length, stacked output). Raises NotRollable."""
    entry = None if ctx.templates is None else ctx.templates.get(key)
    if isinstance(entry, str):
        raise NotRollable(entry)
    if entry is None:
        xs_specs = [(v.shape[1:], v.dtype) for v in xs]
        inv_specs = [(v.shape, v.dtype) for v in invs]
        try:
            peeled, template = find_period(call, T, ctx, xs_specs, inv_specs, [])
        except NotRollable as e:
            if ctx.templates is not None:
                ctx.templates[key] = str(e)
            raise
        ctx.fresh_steps = True
        if template is not None:
            entry = Template(peeled, template)
            if ctx.templates is not None:
                ctx.templates[key] = entry
    else:
        ctx.reused = True
        peeled, template = entry.peeled, entry.body
    pos = (lambda j: T - 1 - j) if reverse else (lambda j: j)
    segments = []
    for j, body in enumerate(peeled[:T]):
        segments.append(("step", pos(j), emit_step(ctx, body, pos(j), xs_step(pos(j)), invs)))
    k = len(peeled)
    if template is not None and T > k:
        ctx.notes.append(
            f"{key[0].describe()}: rolled: {k} peeled step(s) + one scan over the "
            f"step template ({len(template.graph.nodes)} nodes) for {T - k} steps"
        )
        lo, hi = (0, T - k) if reverse else (k, T)
        stacked = emit_scan(
            ctx, template, [slice_rows(x, lo, hi) for x in xs], invs, T - k, reverse
        )
        segments.append(("scan", lo, T - k, stacked))
    if reverse:
        segments.sort(key=lambda s: s[1])
    return segments
