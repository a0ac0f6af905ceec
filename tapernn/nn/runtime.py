"""Running modules: trace the outermost module into one graph per input signature, compile a
forward (and lazily a backward) program, bind parameters/masks/states at call time, write the
results back into module fields. Parameters are inputs, so updates never recompile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arena import Arena
from ..errors import DTypeError, ShapeError, StateError
from ..executor import Compiled, gc_paused
from ..graph import Graph
from ..keep import drop_free
from ..passes import default_passes
from ..validation import data_array, narrowed
from . import auto_plans, layout_recheck
from .backward_input import record_for_input
from .binding import _state_signature
from .config_key import array_copies, array_settings, mixed_dtypes, same_arrays, structure_key
from .executable import Executable
from .packing import VERSION as TREE_VERSION
from .reinforce_seeds import reinforce_seed
from .roll_api import stacked_fields
from .roll_view import trace_starts, view_executable, view_graph
from .rolled import Stacked
from .runtime_args import _as_array, _has_hook, _leaf_names, _own, _plan_options, _rho
from .state_grads import (
    backward_variant,
    forget_steps_before,
    later_tap_grads,
    room_view,
    sequence_cuts,
    stepwise_seeds,
    store_state_input_grads,
)
from .steady import MISS, plan
from .tree import LEAF, flatten, unflatten
from .write_plan import Pending, release_plan
from .write_plan import gather as _gather
from .write_plan import write_plan as _write_plan


def runtime_of(module: Any) -> Runtime:
    if module._runtime is None:
        module._runtime = Runtime(module)
    return module._runtime


class Record:
    """One forward call: what backward needs."""

    timed: float | bool = False  # a layout re-check's timed forward: its seconds

    def __init__(self, exe: Executable, leaves: list, args: list, outs: tuple, saving: bool):
        self.exe, self.leaves, self.args = exe, leaves, args
        n = exe.n_out + len(exe.extras)
        self.outputs = outs[:n]
        self.saved = list(outs[n:]) if saving else None
        self.done = False

    __init__.plain = True  # (nn.steady_source sets these fields itself)


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
        self._tree_cache: tuple | None = None  # (VERSION, hooks, stateful, structure): _tree
        self.steady = None  # the fast path of calls like the last one (nn.steady)
        self._arrays: list = []  # (module, name) of array settings (config_key.array_settings)
        self._last_arrays: list | None = None  # copies of their values at the last call
        self._arrays_version = 0  # counts their changes (the signature holds it)

    def clear(self) -> None:
        self.cache.clear()
        self.variants.clear()
        self.templates.clear()
        self.last = None
        self.arena = Arena()
        self.steady = None

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

    record_type = Record

    def forward(self, *args: Any) -> Any:
        steady = self.steady
        if steady is not None and len(args) == 1:
            return steady.forward(args[0])  # (it takes slow_forward unless the call is steady)
        return self.slow_forward(args)

    def slow_forward(self, args: tuple, hooks_done: bool = False) -> Any:
        """The general forward (`hooks_done`: the steady path ran the hooks already); plans the
        steady path for the next call like this one."""
        self.steady = None
        exe, _leaves, record = self._run(args, n_diff_args=1, hooks_done=hooks_done)
        outs = record.outputs
        if exe.out_tree == LEAF:
            output = outs[0]
        else:
            output = unflatten(exe.out_tree, list(outs[: len(exe.real)]))
        self.module.__dict__["output"] = output  # (a field: no registration check, no descriptor)
        return output

    def _run(
        self, args: tuple, n_diff_args: int, hooks_done: bool = False
    ) -> tuple[Executable, list, Record]:
        root = self.module
        hooks, stateful = self._tree()
        if not hooks_done:
            for hook in hooks:
                hook()
        if len(args) == 1 and type(args[0]) is np.ndarray:
            leaves, tree = [args[0]], (LEAF,)  # (what flatten gives for one array)
        else:
            leaves, tree = flatten(list(args))
        history = bool(root.is_recurrent)
        # step-wise training keeps each step's input until its backward: a copy (Torch7's
        # copyInputs), so a caller refilling one buffer every step does not rewrite the history
        keep = history and root.is_training
        leaves = [_as_array(x, root, copy=keep) for x in leaves]
        key = self._signature(leaves, tree, history, stateful)
        exe = self.cache.get(key)
        if exe is None:
            exe = self.cache[key] = self._trace(key, leaves, tree, args, n_diff_args, history)
        timed = False
        if exe.recheck is not None and root.is_training and not history:  # (layout_recheck)
            if exe.recheck.due():
                exe = self.cache[key] = exe.recheck.settle()
                exe.two_plans = auto_plans.made(exe, True, True)  # (counted from here)
            else:
                trace = lambda: self._trace(key, leaves, tree, args, n_diff_args, history)
                exe, timed = exe.recheck.executable(trace)
        elif exe.two_plans is not None and not history:  # (nn.auto_plans)
            trace = lambda: self._trace(key, leaves, tree, args, n_diff_args, history)
            exe = self.cache[key] = exe.two_plans.executable(trace)
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
        if not history:
            self._release_previous(exe)
        # (the other programs' kept arrays nothing holds now: np.empty's would be freed, keep.py)
        drop_free(self.arena.keepers, getattr(program.program, "keepers", ()))
        used = exe.packing.scratch_into(program, call_args)  # (the zeroed .grad as scratch)
        try:
            if timed:  # (a re-check's timed forward: its seconds)
                outs, timed = layout_recheck.timed(program.run, call_args)
            else:
                outs = program.run(call_args)
        finally:
            if used:
                exe.packing.release_scratch(program, used)
        record = Record(exe, leaves, call_args, outs, saving=root.is_training)
        record.timed = timed  # (seconds of a timed re-check forward, else False)
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
            if history:  # stepping in evaluation mode: the newest record only, numbered after
                self.dropped += len(self.history)  # the steps before (training may follow)
            self.history = [record]
            # (arrays: read at every call; a layout re-check picks the Executable per call)
            steady = exe.recheck is None and exe.two_plans is None  # (nor two plans pending)
            if n_diff_args == 1 and not self._arrays and steady:
                self.steady = plan(self, exe, args, leaves, hooks, stateful)
        return exe, leaves, record

    def _trace(
        self, key: tuple, leaves: list, tree: Any, args: tuple, n_diff_args: int, history: bool
    ) -> Executable:
        """A new Executable of the module for these leaves (traced and laid out; its
        programs compile at first use)."""
        root = self.module
        names = _leaf_names(tree, len(args), root.arg_names)
        n_diff = len(flatten(list(args[:n_diff_args]))[0])
        passes = root._passes if root._passes is not None else default_passes()
        with gc_paused():  # tracing allocates like compiling (see gc_paused)
            exe = Executable(
                root,
                leaves,
                tree,
                names,
                root.is_training,
                history,
                n_diff,
                passes,
                auto_plans.options(_plan_options(root)),
                templates=self.templates,
            )
        exe.key, exe.trace_args, exe.arena = key, (tree, names, n_diff, passes), self.arena
        exe.two_plans = auto_plans.made(exe, not history, root.is_training)
        trace_starts(exe, root)
        self.trace_count += exe.traced_steps
        return exe

    def _release_previous(self, exe: Executable) -> None:
        """Drop the library's references to the previous call's results before this call makes
        new ones (its record; `output`, per-step fields and `grad_input`, which this call's
        write-back replaces): arrays the caller no longer holds are freed now, so a training loop
        never holds two steps' outputs (a rolled loop's output is a view of its whole slab of
        saved values). After a failed call they stay None."""
        self.history = []
        fields = self.module.__dict__  # (plain fields: no registration check, as _write_back)
        fields["output"] = fields["grad_input"] = None
        for m, output, steps in release_plan(exe):
            fields = m.__dict__
            if output:
                fields["output"] = None
            if steps:
                fields["outputs"], fields["inputs"] = [], []
                fields["states"] = {k: [] for k in m.state_names}

    def _tree(self) -> tuple[list, list]:
        """The model's `_before_forward` hooks that do something (in `modules()` order) and its
        recurrent modules with states: walked once per change of the tree (packing.VERSION
        counts every registration), not on every call."""
        cached = self._tree_cache
        if cached is not None and cached[0] == TREE_VERSION[0]:
            return cached[1], cached[2]
        version, modules = TREE_VERSION[0], list(self.module.modules())
        mixed = mixed_dtypes(self.module, modules)
        if mixed:
            raise DTypeError(mixed)
        hooks = [m._before_forward for m in modules if _has_hook(m)]
        stateful = [m for m in modules if m.is_recurrent and hasattr(m, "state_names")]
        structure = structure_key(modules)
        self._arrays = array_settings(modules)  # (read at every call: same_arrays)
        if self._tree_cache is not None and self._tree_cache[3] != structure:
            self._drop_programs()
        self._tree_cache = (version, hooks, stateful, structure)
        return hooks, stateful

    def _drop_programs(self) -> None:
        """Another tree, setting or array setting (config_key): programs traced before never
        run again (what the last call ran stays referenced by its record)."""
        self.cache.clear()
        self.variants.clear()
        self.templates.clear()
        self.steady = None

    def _signature(
        self, leaves: list[np.ndarray], tree: Any, history: bool, stateful: list
    ) -> tuple:
        root = self.module
        states = tuple([_state_signature(m) for m in stateful])
        arrays = None
        if self._arrays:  # a criterion's weights, changed in place or rebound
            if not same_arrays(self._arrays, self._last_arrays):
                if self._last_arrays is not None:
                    self._drop_programs()
                self._last_arrays = array_copies(self._arrays)
                self._arrays_version += 1
            arrays = self._arrays_version
        return (
            tree,
            tuple([(x.shape, x.dtype.str) for x in leaves]),
            root.is_training,
            states,
            root.dtype.str,
            history,
            self._tree_cache[3],  # the tree and its settings (config_key), as _tree saw them
            arrays,
        )

    def _write_back(self, exe: Executable, record: Record, history: bool) -> None:
        outs = record.outputs
        for m, positions in exe.final_plan():
            m._store_state(tuple([_own(outs[k]) for k in positions]))
        mode = "sequence" if not history else ("append" if self.module.is_training else "latest")
        for m, output, leaves, others, by_steps in _write_plan(exe):
            if output is not None:  # (the last "output" probe: each one replaced the one before)
                _, tree, pos, stop = output
                value = outs[pos] if tree == LEAF else unflatten(tree, list(outs[pos:stop]))
                m.__dict__["output"] = value  # (a field: no registration check, no descriptor)
            if by_steps is not None:  # a recurrent module's fields, grouped once per program
                if mode == "sequence":  # made into step rows when first read
                    m._write_pending(Pending(outs, by_steps), by_steps[3])
                    continue
                outputs, inputs, states, _ = by_steps
                m._write_steps(
                    _gather(outs, outputs),
                    _gather(outs, inputs),
                    {name: _gather(outs, at) for name, at in states},
                    mode,
                )
                continue
            fields = [(name, t, outs[pos]) for name, t, pos in leaves]
            for name, t, tree, pos, stop in others:
                if isinstance(t, Stacked):  # a loop's field: one array stacked over its steps
                    fields += stacked_fields(name, t, tree, outs[pos:stop])
                else:
                    fields.append((name, t, unflatten(tree, list(outs[pos:stop]))))
            if fields:
                m._write_fields(fields, mode)

    # ---- backward --------------------------------------------------------------------------------

    def backward(
        self, input: Any, grad_output: Any, n_diff_args: int = 1, need_grad_input: bool = True
    ) -> Any:
        steady = self.steady
        if steady is not None and n_diff_args == 1:
            grad_input = steady.backward(input, grad_output, need_grad_input)
            if grad_input is not MISS:
                return grad_input
        record = self._next_record(input)
        exe = record.exe
        if not exe.history_mode:  # Torch7: backward uses the input it is given
            record = record_for_input(record, input, self.module, _as_array)
        step = self.dropped + self.history.index(record) if exe.history_mode else None
        seeds = self._seeds(exe, grad_output, step)
        taps, room = False, None
        if exe.history_mode:  # stepping by hand: this step's program, state seeds per step
            seeds = stepwise_seeds(exe, step, self.dropped + len(self.history), seeds)
            grads, _ = self._run_backward(exe, record, seeds, need_grad_input)
            store_state_input_grads(exe, step, self._state_grads(exe, grads))
        else:
            cuts = sequence_cuts(exe)
            if cuts:  # set_grad_hidden_state: a variant program where the set values replace
                exe, grads = backward_variant(self, record, cuts, seeds)
            else:
                grads, room = self._run_backward(exe, record, seeds, need_grad_input)
                taps = True
            store_state_input_grads(exe, None, self._state_grads(exe, grads))
        record.done = True
        n_data = len(exe.data_wrt)
        exe.packing.accumulate(grads[n_data : n_data + exe.packing.n_grads])
        got = dict(zip(exe.data_wrt, grads[:n_data])) if need_grad_input else {}
        del grads  # the parameter gradients are accumulated: freed before the copies below
        if taps:  # copies for a lazy get_grad_hidden_state (made once the saved values are gone)
            later_tap_grads(self, record, seeds, room=room)
        if not need_grad_input:
            object.__setattr__(self.module, "grad_input", None)  # (a field, as `output`)
            return None
        if isinstance(input, np.ndarray) and exe.data_wrt[:1] == [0]:
            grad_input = got[0]  # one array in: its gradient (what the general path gives)
        else:
            grad_leaves = [
                got[k] if k in got else np.zeros(np.shape(x), dtype=self.module.dtype)
                for k, x in enumerate(record.leaves)
            ]
            in_leaves, in_tree = flatten(input)
            grad_input = unflatten(in_tree, grad_leaves[: len(in_leaves)])
        object.__setattr__(self.module, "grad_input", grad_input)
        return grad_input

    def _run_backward(
        self, exe: Executable, record: Record, seeds: list, need_grad_input: bool = True
    ) -> tuple[tuple, np.ndarray | None]:
        """The gradients (data inputs' None without need_grad_input: TrainingPair variant),
        and the saved bytes that are dead once they are computed but stay allocated
        (TrainingPair.tap_room, as a flat uint8 view; None: none). The saved values are
        released when backward has read them: a second backward of the same forward
        recomputes them from the forward's arguments (its masks and states)."""
        pair = exe.compile_training()
        if record.saved is None:  # an evaluation forward: recompute what backward needs
            record.saved = pair.saved(pair.forward.run(record.args))
        skip = 0 if need_grad_input else len(exe.data_wrt)
        saved, record.saved = record.saved, None  # consumed: freed as soon as backward returns
        into = (exe.packing, len(exe.data_wrt) - skip)
        if record.timed is not False and exe.recheck is not None:  # (a re-check's timed step)
            grads, seconds = layout_recheck.timed(
                pair.run_backward, saved, record.args, seeds, skip, into
            )
            exe.recheck.record(exe, record.timed + seconds)
        else:
            grads = pair.run_backward(saved, record.args, seeds, skip, into)
        room = pair.tap_room(pair.last_backward)
        return grads, None if room is None else room_view(saved[room[0]], room[1])

    @staticmethod
    def _state_grads(exe: Executable, grads: tuple) -> list:
        start = len(exe.data_wrt) + exe.packing.n_grads
        return list(grads[start : start + len(exe.state_wrt)])

    def _next_record(self, input: Any) -> Record:
        if self.history and not self.history[-1].exe.history_mode:
            return self.history[-1]  # one forward, any number of backwards (grads accumulate)
        pending = [r for r in self.history if not r.done]
        if not pending:
            rho = _rho(self.module)
            if not self.history:
                what = "forward"
            elif not self.dropped:
                what = "another forward (every step was already backwarded)"
            else:  # (before: 'every step was already backwarded' for steps an evaluation dropped)
                what = (
                    f"another forward (steps {self.dropped}.. were backwarded; the steps before "
                    f"were dropped: "
                    + (
                        "a step in evaluation mode keeps only itself)"
                        if rho is None
                        else f"only the last {rho} (rho) are kept, an evaluation step only itself)"
                    )
                )
            raise StateError(f"{self.module.describe()}: backward called before {what}")
        record = pending[-1]
        leaves = flatten(input)[0]
        if record.exe.history_mode:  # step-wise use: backward must retrace steps in reverse order
            same = len(leaves) <= len(record.leaves) and all(
                np.shape(a) == np.shape(b) and np.array_equal(np.asarray(a, b.dtype), b)
                for a, b in zip(leaves, record.leaves)
            )
            if not same:
                step = len(pending) - 1
                raise StateError(
                    f"{self.module.describe()}: step-wise backward takes each step's "
                    f"own input in reverse order; expected the input of step {step} "
                    f"(the latest step not yet backwarded), got a different input"
                )
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
                    raise ShapeError(
                        f"{self.module.describe()}: grad_output has {len(gleaves)} "
                        f"arrays, the output has {len(exe.real)}"
                    )
                g = gleaves[k]
                if isinstance(g, np.ma.MaskedArray):  # (its mask would be dropped silently)
                    raise DTypeError(
                        f"{self.module.describe()}: grad_output {k} is a numpy masked array; "
                        f"pass np.ma.filled(g, 0)"
                    )
                g = np.asarray(g)
                if g.dtype.kind not in "fiub":
                    data_array(f"{self.module.describe()}: grad_output", g)
                if g.dtype.kind == "f" and g.dtype != node.dtype:
                    g = narrowed(self.module.describe(), f"grad_output {k}", g, node.dtype)
                g = g.astype(node.dtype, copy=False)
                if g.shape != node.shape:
                    raise ShapeError(
                        f"{self.module.describe()}: grad_output {k} has shape {g.shape}, "
                        f"expected {node.shape} (the output's shape)"
                    )
            else:  # a final state: stepwise_seeds fills it in
                g = None
            seeds.append(g)
        return seeds
