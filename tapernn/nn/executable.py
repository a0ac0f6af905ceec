"""One traced model for one input signature (`Executable`): the trace of the outermost module,
its outputs, final states and per-step fields, and its forward / training programs (compiled
lazily). `nn.runtime` keeps one per signature and runs them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..arena import Arena, compile_into
from ..autodiff import grad, split_forward_backward
from ..backends import background
from ..backends.packed import rule as packed_rule
from ..errors import ArgumentError, BuildError
from ..executor import Compiled, gc_paused
from ..graph import Graph
from ..optim import inplace_kernel, update_temp_bytes
from ..passes import feature_major_loops, split_concat_matmuls
from ..passes.layout import relayout_before_grad
from ..passes.split_concat import split_before_grad
from ..regions import DEFAULT_OPTIONS, PlanOptions
from ..tracing import Tape
from .binding import _binder
from .context import BuildContext
from .layout_recheck import Recheck
from .packing import Packing, storage
from .runtime_args import refuse_integer_math, refuse_promoted
from .state_grads import (
    tap_copy_bytes,
)
from .step_draws import StepDraws
from .training_pair import TrainingPair
from .tree import flatten, unflatten


class Executable:
    """One traced model for one input signature."""

    def __init__(
        self,
        root: Any,
        leaves: list[np.ndarray],
        tree: Any,
        names: list[str],
        training: bool,
        history_mode: bool,
        n_diff_leaves: int,
        passes: list,
        options: PlanOptions = DEFAULT_OPTIONS,
        cuts: frozenset | None = None,
        templates: dict | None = None,
        unroll: bool = False,
    ):
        """`cuts` (a set, maybe empty) traces the state-gradient variant (nn.state_grads);
        `templates` caches rolled loops' step templates across traces (nn.rolled); `unroll`
        traces every step of every loop into the graph."""
        self.passes, self.options = passes, options
        tape = Tape()
        ctx = BuildContext(
            tape,
            training,
            history_mode,
            taps=cuts is not None,
            cuts=cuts or frozenset(),
            templates=templates,
            unroll=unroll,
        )
        with tape.recording(), ctx:
            data = [
                tape.input(a.shape, a.dtype, name=nm, kind="data") for a, nm in zip(leaves, names)
            ]
            out = root.apply(*unflatten(tree, data))
        _refuse_unregistered(root, ctx)
        out_leaves, self.out_tree = flatten(out)
        for v in out_leaves:
            if not hasattr(v, "node"):
                raise BuildError(f"{root.describe()}.build returned {type(v).__name__}, not a Var")
        self.real = [v.node for v in out_leaves]
        refuse_promoted(root, leaves[:n_diff_leaves], names, self.real)  # (not a target)
        refuse_integer_math(root, leaves, names, tape.graph.nodes)
        # a trace that only re-emitted cached step templates (a new length) traced no step
        self.traced_steps = ctx.fresh_steps or not ctx.reused
        self.notes = list(ctx.notes)
        self.rolled = any(": rolled:" in n for n in self.notes)  # holds a scan loop
        self.finals = [(m, k, v.node) for m, st in ctx.states.items() for k, v in enumerate(st)]
        self.probes = []  # (module, field, step, tree, [nodes])
        for m, name, t, value in ctx.probes:
            pl, pt = flatten(value)
            self.probes.append((m, name, t, pt, [v.node for v in pl]))
        # program outputs: the differentiated ones (real outputs; in step-wise use also the final
        # states), then the final states (sequence use), then the probes, then (training) the
        # values saved for backward
        final_nodes = [n for _, _, n in self.finals]
        self.history_mode = history_mode
        self.diff_outputs = self.real + (final_nodes if history_mode else [])
        # REINFORCE log-probabilities: differentiated outputs seeded with -reward (nn.reinforce)
        self.reinforce_pos = len(self.diff_outputs)
        self.reinforce = [(m, t, v.node) for m, t, v in ctx.reinforce]
        self.diff_outputs += [n for *_, n in self.reinforce]
        extras = ([] if history_mode else final_nodes) + [n for p in self.probes for n in p[4]]
        self.final_pos = len(self.real) if history_mode else len(self.diff_outputs)
        self.probe_pos = len(self.diff_outputs) + (0 if history_mode else len(final_nodes))
        self.n_out = len(self.diff_outputs)
        graph = tape.graph
        graph.meta = replace(
            graph.meta,
            scopes=dict(ctx.scopes),
            root=root.describe(),
            aliases=tuple(ctx.aliases),
            units=drawn_whole(root, ctx.scopes),
        )
        self.graph = Graph(graph.nodes, graph.inputs, self.diff_outputs + extras, graph.meta)
        # what `module.graph` shows: the model's own outputs, not the recorded fields
        self.display = Graph(graph.nodes, graph.inputs, self.real, graph.meta)
        self.extras = extras
        self.recheck = None  # a close "auto" layout confirmed on the real steps (layout_recheck)
        self.two_plans = None  # "auto": NumPy's plan, then numba's (nn.auto_plans)
        self.plan_note = ""  # (auto_plans: the report's backend_note)
        keys = self._choose_layout(passes, options)
        if keys and training and not history_mode:
            self.recheck = Recheck(self, keys)
        data_nodes = [v.node for v in data]
        self.wrt = [n for n in data_nodes[:n_diff_leaves] if n.dtype.kind == "f"]
        self.wrt += [ctx.params[p].node for p in ctx.param_order]
        self.params = list(ctx.param_order)
        # blocked parameters reach the programs as one array per block (nn.packing)
        self.packing = Packing(self.params, [ctx.params[p].node for p in self.params])
        self.arg_nodes = self.packing.inputs(graph.inputs)
        self.binders = self.packing.binders(self.arg_nodes, lambda n: _binder(n, ctx))
        self.state_wrt = [
            (m, k, n, user) for m, k, n, user in ctx.state_inputs if history_mode or user
        ]
        self.state_owners = {n: (m, k) for m, k, n, _ in ctx.state_inputs}  # (state_grads)
        self.wrt += [n for _, _, n, _ in self.state_wrt]
        # a rolled loop's random inputs: node -> (its StepDraws, site number) (nn.step_draws)
        self.step_draws = {n: (g, j) for n, g, j in ctx.randoms if isinstance(g, StepDraws)}
        self.tap_inputs = ctx.tap_inputs  # (module, step, leaf, node): variants only
        self.wrt += [n for *_, n in self.tap_inputs]
        self.data_wrt = [k for k, n in enumerate(data_nodes[:n_diff_leaves]) if n.dtype.kind == "f"]
        self.n_data = len(data_nodes)
        self.forward_only: Compiled | None = None
        self.arena: Arena | None = None  # the buffers of the Runtime's programs (set by it)
        self.recurrent: list | None = None  # recurrent modules of the model (Runtime.forward)
        self.training_pair: TrainingPair | None = None
        self.seeded_variants: dict[tuple, TrainingPair] = {}
        self.seeded = [k for k, n in enumerate(self.diff_outputs) if n.dtype.kind == "f"]

    def _choose_layout(self, passes: list, options: PlanOptions) -> list:
        """Run split_concat_matmuls and feature_major_loops (those in `passes`) on the traced
        graph, before any `grad`: a loop's backward is then derived from the forward as it
        runs (its concatenated GEMM operands split, its layout), and the forward and backward
        programs agree on the slab between them. The output nodes are remapped. Returns the
        keys of the "auto" decisions the real steps should confirm."""
        old = self.graph
        new = old
        if split_concat_matmuls in passes:
            new, notes = split_before_grad(old)
            self.notes += notes
        keys: list = []
        if feature_major_loops in passes:
            new, notes, chosen = relayout_before_grad(
                new, options.layout, packed_rule(options), options.backend, keys
            )
            self.notes += notes
            # the programs compile with the choice made here (their graphs are differentiated)
            self.options = replace(options, layout=chosen)
        if new is old:
            return keys
        m = dict(zip(old.outputs, new.outputs))
        self.graph = new
        self.real = [m[n] for n in self.real]
        self.diff_outputs = [m[n] for n in self.diff_outputs]
        self.extras = [m[n] for n in self.extras]
        self.finals = [(mod, k, m[n]) for mod, k, n in self.finals]
        self.reinforce = [(mod, t, m[n]) for mod, t, n in self.reinforce]
        self.probes = [(*p[:4], [m[n] for n in p[4]]) for p in self.probes]
        self.display = Graph(new.nodes, new.inputs, self.real, new.meta)
        return keys

    def probe_plan(self) -> list:
        """Per module, its probes' (field, step, tree, output positions): computed once, so a
        call does no grouping and no tree walks for single-array probes (per-call overhead
        dominates small models)."""
        plan = getattr(self, "_probe_plan", None)
        if plan is None:
            by_module: dict[Any, list] = {}
            pos = self.probe_pos
            for m, name, t, tree, nodes in self.probes:
                by_module.setdefault(m, []).append((name, t, tree, pos, pos + len(nodes)))
                pos += len(nodes)
            plan = self._probe_plan = list(by_module.items())
        return plan

    def final_plan(self) -> list:
        """Per module, the output positions of its final state's leaves (computed once)."""
        plan = getattr(self, "_final_plan", None)
        if plan is None:
            by_module: dict[Any, list] = {}
            for j, (m, _, _) in enumerate(self.finals):
                by_module.setdefault(m, []).append(self.final_pos + j)
            plan = self._final_plan = list(by_module.items())
        return plan

    def compile_forward(self) -> Compiled:
        if self.forward_only is None:
            packed = self.packing.rewrite(self.graph)
            with background.first_call():  # (as _pair)
                self.forward_only = compile_into(
                    self.aliasing_probes(packed), self.arena, self.passes, self.options
                )
        return self.forward_only

    def aliasing_probes(self, graph: Graph) -> Graph:
        """`graph` with meta naming the outputs that are probes of a view of a data input (a
        Sequencer's per-step `input` field, x[t]): returned as views of the caller's array,
        as in Torch, instead of copies (T*B*D bytes and T copies per call)."""
        probes = {n for p in self.probes for n in p[4]}
        alias = [k for k, o in enumerate(graph.outputs) if o in probes and _views_data(o)]
        if not alias:
            return graph
        return Graph(
            graph.nodes,
            graph.inputs,
            graph.outputs,
            replace(graph.meta, outputs_may_alias_inputs=tuple(alias)),
        )

    def compile_training(self, extra_seeded: tuple = ()) -> TrainingPair:
        """The forward program that keeps what backward needs, and the backward program;
        `extra_seeded` nodes (states given a gradient by set_grad_hidden_state) become extra
        seeded outputs of a variant pair."""
        if not extra_seeded:
            if self.training_pair is None:
                self.training_pair = self._pair(self.diff_outputs)
            return self.training_pair
        key = tuple(n.id for n in extra_seeded)
        if key not in self.seeded_variants:
            self.seeded_variants[key] = self._pair(self.diff_outputs + list(extra_seeded))
        return self.seeded_variants[key]

    def _pair(self, outputs: list) -> TrainingPair:
        # (numba's kernels made from the first call's end, or FIRST_CALL_HOLD_S into it)
        with gc_paused(), background.first_call():
            return self._make_pair(outputs)

    def _make_pair(self, outputs: list) -> TrainingPair:
        g = Graph(self.graph.nodes, self.graph.inputs, outputs, self.graph.meta)
        joint = grad(g, wrt=self.wrt, seeds="inputs", also=self.extras)
        n = len(outputs)
        # the probes and final states are forward outputs too, but never differentiated (a
        # scan's VJP may rewire the graph: `also` gives the nodes standing for them now)
        joint.outputs = joint.outputs[:n] + joint.also + joint.outputs[n:]
        grads = joint.outputs[n + len(self.extras) :]
        display = Graph(
            joint.nodes, joint.inputs, joint.outputs[: len(self.real)] + grads, joint.meta
        )
        start = n + len(self.extras) + len(self.data_wrt)
        joint = self.packing.rewrite(joint, (start, start + len(self.params)))
        fwd, bwd = split_forward_backward(joint, n + len(self.extras))
        return TrainingPair(
            self.aliasing_probes(fwd), bwd, display, self.passes, self.options, self.arena
        )

    def bind(self, leaves: list[np.ndarray]) -> list[np.ndarray]:
        """The program's arguments: data leaves, parameter arrays, fresh dropout masks, states."""
        return [b(leaves) for b in self.binders]

    def report(self, steps: int = 1):
        """The joined report; step-wise, `steps` records held at once count in its peak."""
        from ..passes import CompileReport

        if self.training_pair is None:
            return replace(self.compile_forward().report, notes=list(self.notes))
        pair = self.training_pair
        report = replace(
            CompileReport.joined(
                pair.forward.report,
                pair.last_backward.report,
                pair.saved_bytes,
                pair.resident_bytes,
                pair.step_peak_bytes(
                    len(self.data_wrt),
                    tap_copy_bytes(self) + self._update_bytes(),
                    self._held_steps(steps),
                    self.packing.n_grads,
                ),
            ),
            notes=list(self.notes),
        )
        # (two plans: their window's peak is the NumPy plan's with the shared arena grown to the
        # numba plan's -- step_peak_bytes reads it -- what tracemalloc saw: nn.auto_plans)
        return replace(report, backend_note=self.plan_note) if self.plan_note else report

    def _update_bytes(self) -> int:
        """The temporary of the update after backward (optim.subtract_scaled), at most one
        piece. With numba's in-place update (optim.inplace_kernel) over the arrays it updates
        (nn.packing.storage: one small enough makes none); NumPy's, the parameters' total
        bytes bound each array (at (10, 4, 16) the arrays' own sizes leave the report 1.09-1.16x
        below what is held, whose Python objects this bound has covered: BENCHMARKS "hpeak")."""
        params = [n for n in self.graph.inputs if n.kind == "param"]
        if not params:
            return 0
        itemsize = max(np.dtype(n.dtype).itemsize for n in params)
        if inplace_kernel() is not None:
            return update_temp_bytes([d.nbytes for d, _ in storage(self.params)], itemsize)
        return update_temp_bytes([sum(n.nbytes for n in params)], itemsize)

    def _held_steps(self, steps: int) -> tuple[int, int] | None:
        """Step-wise: (records held, bytes of the input copies each keeps); else None."""
        if not self.history_mode:
            return None
        return steps, sum(n.nbytes for n in self.graph.inputs[: self.n_data])


def _views_data(n) -> bool:
    """n is a data input or a chain of view ops over one."""
    from ..ops.registry import get_op

    while n.op != "input":
        if n.op == "constant" or not get_op(n.op).view:
            return False
        n = n.inputs[0]
    return n.kind == "data"


def _refuse_unregistered(root: Any, ctx: BuildContext) -> None:
    """A module applied in `root`'s build but held outside its tree (`self.layers = [nn.Linear(..)]`
    in a custom module: a list is not registered) would be trained by backward, yet
    `parameters()`, `zero_grad_parameters()`, optimizers and `save` would never see its
    parameters: its gradients would grow without bound and its weights never be updated or
    saved. Refused by name."""
    known = {id(p) for m in root.modules() for p in m._params.values()}  # (not parameters(),
    # which a subclass may override to leave frozen ones out)
    stray = [p for p in ctx.param_order if id(p) not in known]
    if stray:
        p = stray[0]
        owner = f"{p._home.describe()}'s " if p._home is not None else ""
        raise ArgumentError(
            f"{root.describe()}: {owner}parameter {p.name!r} is used in the model but its module"
            f" is not one of the model's modules ({len(stray)} such parameters), so parameters(),"
            f" zero_grad_parameters(), the optimizers and save would miss them; register the"
            f" module as a field (self.layer = module), with add_child(name, module) or in a"
            f" container such as nn.Sequential (a list or dict of modules is not registered)"
        )


def drawn_whole(root: Any, scopes: dict) -> tuple[str, ...]:
    """The scopes (module paths: child names joined by ".") whose module draws as one box per
    step in module-level diagrams (`Module._drawn_whole`: recurrent modules, MaskZero)."""
    units = []
    for path in scopes:
        m = root
        for name in path.split(".") if path else ():
            m = dict(m.named_children()).get(name)
            if m is None:
                break
        if m is not None and m._drawn_whole:
            units.append(path)
    return tuple(units)
