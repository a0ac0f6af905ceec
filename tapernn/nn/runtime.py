"""Running modules: trace the outermost module into one graph per input signature, compile a
forward (and lazily a backward) program, bind parameters/masks/states at call time, write the
results back into module fields. Parameters are inputs, so updates never recompile.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..arena import Arena, compile_into
from ..autodiff import grad, split_forward_backward
from ..errors import ShapeError, StateError, TapernnError
from ..executor import Compiled, gc_paused
from ..graph import Graph
from ..passes import default_passes
from ..regions import DEFAULT_OPTIONS, PlanOptions
from ..tracing import Tape
from ..validation import data_array
from .backward_input import record_for_input
from .binding import _binder, _state_signature
from .context import BuildContext
from .packing import Packing
from .reinforce_seeds import reinforce_seed
from .roll_api import stacked_fields
from .roll_view import trace_starts, view_executable, view_graph
from .rolled import Stacked
from .state_grads import (
    backward_variant,
    forget_steps_before,
    later_tap_grads,
    sequence_cuts,
    stepwise_seeds,
    store_state_input_grads,
    tap_copy_bytes,
)
from .training_pair import TrainingPair
from .tree import LEAF, count_leaves, flatten, unflatten


def runtime_of(module: Any) -> Runtime:
    if module._runtime is None:
        module._runtime = Runtime(module)
    return module._runtime


class Executable:
    """One traced model for one input signature."""

    def __init__(self, root: Any, leaves: list[np.ndarray], tree: Any, names: list[str],
                 training: bool, history_mode: bool, n_diff_leaves: int, passes: list,
                 options: PlanOptions = DEFAULT_OPTIONS, cuts: frozenset | None = None,
                 templates: dict | None = None, unroll: bool = False):
        """`cuts` (a set, maybe empty) traces the state-gradient variant (nn.state_grads);
        `templates` caches rolled loops' step templates across traces (nn.rolled); `unroll`
        traces every step of every loop into the graph."""
        self.passes, self.options = passes, options
        tape = Tape()
        ctx = BuildContext(tape, training, history_mode, taps=cuts is not None,
                           cuts=cuts or frozenset(), templates=templates, unroll=unroll)
        with tape.recording(), ctx:
            data = [tape.input(a.shape, a.dtype, name=nm, kind="data") for a, nm in zip(leaves, names)]
            out = root.apply(*unflatten(tree, data))
        out_leaves, self.out_tree = flatten(out)
        for v in out_leaves:
            if not hasattr(v, "node"):
                raise TapernnError(f"{root.describe()}.build returned {type(v).__name__}, not a Var")
        self.real = [v.node for v in out_leaves]
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
        graph.meta = replace(graph.meta, scopes=dict(ctx.scopes), root=root.describe(),
                             aliases=tuple(ctx.aliases))
        self.graph = Graph(graph.nodes, graph.inputs, self.diff_outputs + extras, graph.meta)
        # what `module.graph` shows: the model's own outputs, not the recorded fields
        self.display = Graph(graph.nodes, graph.inputs, self.real, graph.meta)
        self.extras = extras
        data_nodes = [v.node for v in data]
        self.wrt = [n for n in data_nodes[:n_diff_leaves] if n.dtype.kind == "f"]
        self.wrt += [ctx.params[p].node for p in ctx.param_order]
        self.params = list(ctx.param_order)
        # blocked parameters reach the programs as one array per block (nn.packing)
        self.packing = Packing(self.params, [ctx.params[p].node for p in self.params])
        self.arg_nodes = self.packing.inputs(graph.inputs)
        self.binders = self.packing.binders(self.arg_nodes, lambda n: _binder(n, ctx))
        self.state_wrt = [(m, k, n, user) for m, k, n, user in ctx.state_inputs
                          if history_mode or user]
        self.wrt += [n for _, _, n, _ in self.state_wrt]
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

    def compile_forward(self) -> Compiled:
        if self.forward_only is None:
            packed = self.packing.rewrite(self.graph)
            self.forward_only = compile_into(self.aliasing_probes(packed), self.arena,
                                             self.passes, self.options)
        return self.forward_only

    def aliasing_probes(self, graph: Graph) -> Graph:
        """`graph` with meta naming the outputs that are probes of a view of a data input (a
        Sequencer's per-step `input` field, x[t]): returned as views of the caller's array,
        as in Torch, instead of copies (T*B*D bytes and T copies per call)."""
        probes = {n for p in self.probes for n in p[4]}
        alias = [k for k, o in enumerate(graph.outputs) if o in probes and _views_data(o)]
        if not alias:
            return graph
        return Graph(graph.nodes, graph.inputs, graph.outputs,
                     replace(graph.meta, outputs_may_alias_inputs=tuple(alias)))

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
        with gc_paused():
            return self._make_pair(outputs)

    def _make_pair(self, outputs: list) -> TrainingPair:
        g = Graph(self.graph.nodes, self.graph.inputs, outputs, self.graph.meta)
        joint = grad(g, wrt=self.wrt, seeds="inputs", also=self.extras)
        n = len(outputs)
        # the probes and final states are forward outputs too, but never differentiated (a
        # scan's VJP may rewire the graph: `also` gives the nodes standing for them now)
        joint.outputs = joint.outputs[:n] + joint.also + joint.outputs[n:]
        grads = joint.outputs[n + len(self.extras):]
        display = Graph(joint.nodes, joint.inputs, joint.outputs[:len(self.real)] + grads,
                        joint.meta)
        start = n + len(self.extras) + len(self.data_wrt)
        joint = self.packing.rewrite(joint, (start, start + len(self.params)))
        fwd, bwd = split_forward_backward(joint, n + len(self.extras))
        return TrainingPair(self.aliasing_probes(fwd), bwd, display, self.passes, self.options,
                            self.arena)

    def bind(self, leaves: list[np.ndarray]) -> list[np.ndarray]:
        """The program's arguments: data leaves, parameter arrays, fresh dropout masks, states."""
        return [b(leaves) for b in self.binders]

    def report(self, steps: int = 1):
        """The joined report; step-wise, `steps` records held at once count in its peak."""
        from ..passes import CompileReport
        if self.training_pair is None:
            return replace(self.compile_forward().report, notes=list(self.notes))
        pair = self.training_pair
        return replace(CompileReport.joined(
            pair.forward.report, pair.last_backward.report, pair.saved_bytes,
            pair.resident_bytes, pair.step_peak_bytes(len(self.data_wrt), tap_copy_bytes(self),
                                                      self._held_steps(steps))),
            notes=list(self.notes))

    def _held_steps(self, steps: int) -> tuple[int, int] | None:
        """Step-wise: (records held, bytes of the input copies each keeps); else None."""
        if not self.history_mode:
            return None
        return steps, sum(n.nbytes for n in self.graph.inputs[:self.n_data])


def _views_data(n) -> bool:
    """n is a data input or a chain of view ops over one."""
    from ..ops.registry import get_op

    while n.op != "input":
        if n.op == "constant" or not get_op(n.op).view:
            return False
        n = n.inputs[0]
    return n.kind == "data"


class Record:
    """One forward call: what backward needs."""

    def __init__(self, exe: Executable, leaves: list, args: list, outs: tuple, saving: bool):
        self.exe, self.leaves, self.args = exe, leaves, args
        n = exe.n_out + len(exe.extras)
        self.outputs = outs[:n]
        self.saved = list(outs[n:]) if saving else None
        self.done = False


class Runtime:
    """The compile cache and call history of one module used as the outermost module."""

    def __init__(self, module: Any):
        self.module = module
        self.cache: dict[Any, Executable] = {}
        self.trace_count = 0
        self.last: Executable | None = None
        self.history: list[Record] = []
        self.dropped = 0  # step records discarded because of rho
        self.most_steps = 1  # most step-wise records held at once (the report's peak counts them)
        self.variants: dict[tuple, Executable] = {}  # (signature, cuts) -> state-gradient variant
        self.templates: dict = {}  # rolled loops' step templates (nn.rolled), across lengths
        self.arena = Arena()  # one set of buffers for all its programs (they run one at a time)

    def clear(self) -> None:
        self.cache.clear()
        self.variants.clear()
        self.templates.clear()
        self.last = None
        self.arena = Arena()

    def last_graph(self) -> Graph | None:
        """The last traced model: forward and (after a training forward) backward nodes."""
        if self.last is None:
            return None
        if self.last.rolled:  # shown unrolled, one sub-graph per step (nn.roll_view)
            return view_graph(self, self.last)
        pair = self.last.training_pair
        return pair.joint if pair is not None else self.last.display

    def display_executable(self) -> Executable | None:
        """The last program as diagrams draw it (a rolled one: its unrolled view)."""
        if self.last is None or not self.last.rolled:
            return self.last
        return view_executable(self, self.last)

    def last_compiled(self) -> Compiled | None:
        if self.last is None:
            return None
        pair = self.last.training_pair
        return pair.forward if pair is not None else self.last.forward_only

    # ---- forward ---------------------------------------------------------------------------------

    def forward(self, *args: Any) -> Any:
        exe, _leaves, record = self._run(args, n_diff_args=1)
        outs = record.outputs
        self.module.output = unflatten(exe.out_tree, list(outs[: len(exe.real)]))
        return self.module.output

    def _run(self, args: tuple, n_diff_args: int) -> tuple[Executable, list, Record]:
        root = self.module
        for m in root.modules():
            m._before_forward()
        leaves, tree = flatten(list(args))
        history = bool(root.is_recurrent)
        # step-wise training keeps each step's input until its backward: a copy (Torch7's
        # copyInputs), so a caller refilling one buffer every step does not rewrite the history
        keep = history and root.is_training
        leaves = [_as_array(x, root, copy=keep) for x in leaves]
        key = self._signature(leaves, tree, history)
        exe = self.cache.get(key)
        if exe is None:
            names = _leaf_names(tree, len(args))
            n_diff = len(flatten(list(args[:n_diff_args]))[0])
            passes = root._passes if root._passes is not None else default_passes()
            with gc_paused():  # tracing allocates like compiling (see gc_paused)
                exe = Executable(root, leaves, tree, names, root.is_training, history, n_diff,
                                 passes, root._plan_options or DEFAULT_OPTIONS,
                                 templates=self.templates)
            exe.key, exe.trace_args, exe.arena = key, (tree, names, n_diff, passes), self.arena
            trace_starts(exe, root)
            self.cache[key] = exe
            self.trace_count += exe.traced_steps
        self.last = exe
        # where each recurrent module started (a state-gradient variant is traced as this was)
        if exe.recurrent is None:  # the model's recurrent modules, found once per trace
            exe.recurrent = [m for m in root.modules() if hasattr(m, "_user_initial")]
        starts = None if history else [(m, m._state, m._user_initial) for m in exe.recurrent]
        call_args = exe.bind(leaves)
        if root.is_training:
            program = exe.compile_training().forward
        else:
            program = exe.compile_forward()
        outs = program.run(call_args)
        record = Record(exe, leaves, call_args, outs, saving=root.is_training)
        record.starts = starts
        self._write_back(exe, record, history)
        if history and root.is_training:
            self.history.append(record)  # step-wise BPTT walks these back in reverse order
            rho = _rho(root)
            if rho is not None and len(self.history) > rho:
                self.dropped += len(self.history) - rho  # bounded memory: BPTT over rho steps
                self.history = self.history[-rho:]
                forget_steps_before(root, self.dropped)
            self.most_steps = max(self.most_steps, len(self.history))
        else:
            self.history = [record]
        return exe, leaves, record

    def _signature(self, leaves: list[np.ndarray], tree: Any, history: bool) -> tuple:
        root = self.module
        states = tuple(_state_signature(m) for m in root.modules()
                       if m.is_recurrent and hasattr(m, "state_names"))
        return (tree, tuple((x.shape, x.dtype.str) for x in leaves), root.is_training, states,
                root.dtype.str, history)

    def _write_back(self, exe: Executable, record: Record, history: bool) -> None:
        outs = record.outputs
        finals: dict[Any, list] = {}
        for j, (m, _, _) in enumerate(exe.finals):
            finals.setdefault(m, []).append(outs[exe.final_pos + j])
        for m, st in finals.items():
            m._store_state(tuple(st))
        mode = "sequence" if not history else ("append" if self.module.is_training else "latest")
        for m, items in exe.probe_plan():
            fields = []
            for name, t, tree, pos, stop in items:
                if isinstance(t, Stacked):  # a loop's field: one array stacked over its steps
                    fields += stacked_fields(name, t, tree, outs[pos:stop])
                    continue
                value = outs[pos] if tree == LEAF else unflatten(tree, list(outs[pos:stop]))
                if name == "output":
                    m.output = value
                else:
                    fields.append((name, t, value))
            if fields:
                m._write_fields(fields, mode)

    # ---- backward --------------------------------------------------------------------------------

    def backward(self, input: Any, grad_output: Any, n_diff_args: int = 1,
                 need_grad_input: bool = True) -> Any:
        record = self._next_record(input)
        exe = record.exe
        if not exe.history_mode:  # Torch7: backward uses the input it is given
            record = record_for_input(record, input, self.module, _as_array)
        step = self.dropped + self.history.index(record) if exe.history_mode else None
        seeds = self._seeds(exe, grad_output, step)
        if exe.history_mode:  # stepping by hand: this step's program, state seeds per step
            seeds = stepwise_seeds(exe, step, self.dropped + len(self.history), seeds)
            grads = self._run_backward(exe, record, seeds, need_grad_input)
            store_state_input_grads(exe, step, self._state_grads(exe, grads))
        else:
            cuts = sequence_cuts(exe)
            if cuts:  # set_grad_hidden_state: a variant program where the set values replace
                exe, grads = backward_variant(self, record, cuts, seeds)
            else:
                grads = self._run_backward(exe, record, seeds, need_grad_input)
                later_tap_grads(self, record, seeds)
            store_state_input_grads(exe, None, self._state_grads(exe, grads))
        record.done = True
        n_data = len(exe.data_wrt)
        exe.packing.accumulate(grads[n_data: n_data + exe.packing.n_grads])
        if not need_grad_input:
            self.module.grad_input = None
            return None
        got = dict(zip(exe.data_wrt, grads[:n_data]))  # zeros only where no gradient comes
        grad_leaves = [got[k] if k in got else np.zeros(np.shape(x), dtype=self.module.dtype)
                       for k, x in enumerate(record.leaves)]
        in_leaves, in_tree = flatten(input)
        grad_input = unflatten(in_tree, grad_leaves[: len(in_leaves)])
        self.module.grad_input = grad_input
        return grad_input

    def _run_backward(self, exe: Executable, record: Record, seeds: list,
                      need_grad_input: bool = True) -> tuple:
        """The gradients (data inputs' None without need_grad_input: TrainingPair variant).
        The saved values are released when backward has read them: a second backward of the
        same forward recomputes them from the forward's arguments (its masks and states)."""
        pair = exe.compile_training()
        if record.saved is None:  # an evaluation forward: recompute what backward needs
            record.saved = pair.saved(pair.forward.run(record.args))
        skip = 0 if need_grad_input else len(exe.data_wrt)
        saved, record.saved = record.saved, None  # consumed: freed as soon as backward returns
        return pair.run_backward(saved, record.args, seeds, skip)

    @staticmethod
    def _state_grads(exe: Executable, grads: tuple) -> list:
        start = len(exe.data_wrt) + exe.packing.n_grads
        return list(grads[start: start + len(exe.state_wrt)])

    def _next_record(self, input: Any) -> Record:
        if self.history and not self.history[-1].exe.history_mode:
            return self.history[-1]  # one forward, any number of backwards (grads accumulate)
        pending = [r for r in self.history if not r.done]
        if not pending:
            what = "forward" if not self.history else "another forward (every step was already backwarded)"
            if self.history and self.dropped:
                what += f"; older steps were dropped: only the last {_rho(self.module)} (rho) are kept"
            raise StateError(f"{self.module.describe()}: backward called before {what}")
        record = pending[-1]
        leaves = flatten(input)[0]
        if record.exe.history_mode:  # step-wise use: backward must retrace steps in reverse order
            same = len(leaves) <= len(record.leaves) and all(
                np.shape(a) == np.shape(b) and np.array_equal(np.asarray(a, b.dtype), b)
                for a, b in zip(leaves, record.leaves))
            if not same:
                step = len(pending) - 1
                raise StateError(f"{self.module.describe()}: step-wise backward takes each step's "
                                 f"own input in reverse order; expected the input of step {step} "
                                 f"(the latest step not yet backwarded), got a different input")
        return record

    def _seeds(self, exe: Executable, grad_output: Any, step: int | None = None) -> list:
        """grad_output, final-state gradients, -reward (REINFORCE; of step-wise `step`)."""
        gleaves = flatten(grad_output)[0] if grad_output is not None else []
        seeds = []
        for k in exe.seeded:
            node = exe.diff_outputs[k]
            if k >= exe.reinforce_pos:
                m, t, rnode = exe.reinforce[k - exe.reinforce_pos]
                seeds.append(reinforce_seed(m, step if t is None else t, rnode))
                continue
            if k < len(exe.real):
                if k >= len(gleaves):
                    raise ShapeError(f"{self.module.describe()}: grad_output has {len(gleaves)} "
                                     f"arrays, the output has {len(exe.real)}")
                g = data_array(f"{self.module.describe()}: grad_output",
                               np.asarray(gleaves[k])).astype(node.dtype, copy=False)
                if g.shape != node.shape:
                    raise ShapeError(f"{self.module.describe()}: grad_output {k} has shape {g.shape}, "
                                     f"expected {node.shape} (the output's shape)")
            else:  # a final state: stepwise_seeds fills it in
                g = None
            seeds.append(g)
        return seeds


def _as_array(x: Any, root: Any, copy: bool = False) -> np.ndarray:
    """x as an array of the model's float dtype; with `copy`, never the caller's own array."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
        if x.dtype == object:
            raise TapernnError(f"{root.describe()}: inputs are arrays or (nested) lists of arrays")
    data_array(root.describe(), x)
    if x.dtype.kind == "f" and x.dtype != root.dtype:
        return x.astype(root.dtype)  # data follows the model's dtype (astype converts models)
    if x.dtype.kind == "b":
        return x.astype(root.dtype)
    return x.copy() if copy else x


def _leaf_names(tree: Any, n_args: int) -> list[str]:
    base = ["input", "target"] if n_args == 2 else ["input"]
    names = []
    for k, sub in enumerate(tree):
        prefix = base[k] if k < len(base) else f"arg{k}"
        names += [prefix] if sub == "*" else [f"{prefix}[{j}]" for j in range(count_leaves(sub))]
    return names


def _rho(root: Any) -> int | None:
    values = [m.rho for m in root.modules() if getattr(m, "rho", None)]
    return min(values) if values else None
