"""The steady-state fast path of a module call (issue 19): a call whose signature equals the
previous call's (one array input of the same shape and dtype, the same parameters' arrays, mode,
model dtype and initial-state kinds) runs its compiled program again without re-deriving what
cannot have changed -- no flattening, signature, cache lookup or record checks -- and its
backward (the same input array, one output gradient of the output's shape and dtype, no
set_grad_hidden_state pending) goes straight to the backward program. Everything else takes
nn.runtime's general path, which plans the next steady call (`plan`). A plan's forward and
backward are Python functions generated for it (nn.steady_source)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .packing import VERSION
from .state_grads import _recurrent_steps
from .steady_source import backward_function, forward_function
from .tree import LEAF
from .write_plan import release_plan, write_plan

MISS = object()  # a steady backward that must take the general path


class Steady:
    """What the last general forward derived, for calls with its signature (see module doc)."""

    MISS = MISS  # (what backward returns for a call that is not the steady one)

    def __init__(
        self, rt: Any, exe: Any, x: np.ndarray, hooks: list, stateful: list, states: tuple
    ):
        root = rt.module
        self.rt, self.root, self.exe = rt, root, exe
        self.version = VERSION[0]  # parameters' arrays, hooks, stateful modules: all as then
        self.shape, self.dtype = x.shape, x.dtype
        self.training, self.root_dtype = root.is_training, root._dtype
        self.hooks = plan_hooks(hooks)
        # per stateful module: its initial state's kind as the hooks left it (_state_signature),
        # and whether that is "none" of the built-in kind (checked inline)
        self.stateful = [(m, s, s[0] is None and _plain_state(m)) for m, s in zip(stateful, states)]
        self.recurrent = exe.recurrent
        self.pair = exe.compile_training() if root.is_training else None
        self.program = self.pair.forward if self.pair is not None else exe.compile_forward()
        node = exe.diff_outputs[0]
        self.gshape, self.gdtype = node.shape, node.dtype
        self.n_kept = exe.n_out + len(exe.extras)  # (Record.outputs; the rest is saved)
        self.cut_modules = list(_recurrent_steps(exe))  # set_grad_hidden_state is read there
        self.args, self.data_at, self.dynamic = _bind_plan(exe, x)
        self.fields = _fields_plan(exe)
        self.grads = [exe.params[k].grad for k in exe.packing.loose]  # (the same while VERSION)
        self.groups = exe.packing.groups
        self.saved_at = range(self.n_kept, sys.maxsize)  # forward results only backward reads
        self.n_params = len(self.grads) + len(self.groups)  # backward results accumulated at once
        self.scratch: dict[int, tuple] = {}  # id(program) -> (fn, run, what _run calls)
        self.fast: dict[int, tuple] = {}  # id(program) -> where generated code keeps those
        self.release = [  # (Runtime._release_previous's plan)
            (m.__dict__, output, tuple(m.state_names) if steps else None)
            for m, output, steps in release_plan(exe)
        ]
        # forward(x) -> output (nn.steady_source); entry: the same holding the tree lock, what
        # the locked wrapper of a forward marked `steady_entry` calls (locking.locked_method)
        self.forward, self.entry = forward_function(self)
        if self.pair is not None:  # backward(input, g, need_grad_input) -> grad_input | MISS
            self.backward, self.backward_entry = backward_function(self, MISS)

    def __deepcopy__(self, memo: dict) -> None:
        """A copied model plans its own steady path (this one's planned hooks and field
        references are the original model's)."""
        return

    def backward(self, input: Any, grad_output: Any, need_grad_input: bool) -> Any:
        """An evaluation forward's steady plan: every backward takes the general path (a
        training plan's backward is generated: nn.steady_source.backward_function)."""
        return MISS

    def backward_entry(self, *args: Any, **kwargs: Any) -> Any:
        """(backward's locked entry: the general path, as `backward`)"""
        return MISS

    def _run(self, compiled: Any, args: list, private: range) -> tuple:
        """compiled.run(args); a whole-program numba kernel without BLAS calls (numba_program:
        its `run` is `_run`) called directly -- it reads no NumPy error state -- writing the
        results at `private` positions (never seen outside this steady path, dead by its next
        call) into scratch arrays reused by every call (numba_program.scratch_runner). A
        failure runs it again through `run`, which names the failing node; a `run` replaced
        by someone else (a wrapper) is called as it is."""
        fn, run = compiled.program.fn, compiled.__dict__.get("run")
        entry = self.scratch.get(id(compiled))
        if entry is None or entry[0] is not fn or entry[1] is not run:  # (new, or changed)
            direct = None
            if getattr(fn, "kernel", None) is not None and (
                getattr(run, "__func__", None) is type(compiled)._run
            ):
                from ..backends.numba_program import scratch_runner

                direct = scratch_runner(fn, private, self._into(private)) or fn
            entry = self.scratch[id(compiled)] = (fn, run, direct)
            fast = self.fast.get(id(compiled))
            if fast is not None:  # (steady_source._call: the generated code's inline case)
                ns, fn_name, run_name, direct_name = fast
                ns[fn_name], ns[run_name], ns[direct_name] = (
                    (fn, run, direct)
                    if direct
                    else (
                        None,
                        None,
                        None,
                    )
                )
        direct = entry[2]
        if direct is None:
            return compiled.run(args)
        try:
            return direct(*args)
        except Exception:  # noqa: BLE001 (any failure: `run` raises it as the TapernnError it is)
            return compiled.run(args)

    def _into(self, private: range) -> dict | None:
        """result position -> the `.grad` it is accumulated into, for a backward program whose
        parameter gradients are at `private` (the loose parameters', then each block's; a
        block no longer intact accumulates member by member: none); None for a forward."""
        if private is self.saved_at or len(private) != self.n_params:
            return None
        grads = self.grads + [g.block.grad if g.block.intact else None for g in self.groups]
        return {p: g for p, g in zip(private, grads) if g is not None}


def plan(rt: Any, exe: Any, args: tuple, leaves: list, hooks: list, stateful: list) -> Any:
    """A Steady for calls like this general one, or None where the fast path does not apply:
    step-wise use (history), several or nested inputs, a table output, several seeds (final
    states, REINFORCE), an input that is not differentiated (integers), or an input the general
    path converted (its dtype or a list)."""
    if (
        exe.history_mode
        or len(args) != 1
        or type(args[0]) is not np.ndarray
        or len(leaves) != 1
        or leaves[0] is not args[0]
        or exe.out_tree != LEAF
        or exe.reinforce
        or exe.seeded != [0]
        or exe.data_wrt != [0]
    ):
        return None
    return Steady(rt, exe, leaves[0], hooks, stateful, exe.key[3])


def plan_hooks(hooks: list) -> list:
    """The model's hooks (bound `_before_forward`s, in modules() order) with each one whose
    module plans it (`_planned_before_forward`: a Sequencer's forget) replaced by the planned
    function, and the hooks that function covers dropped."""
    planned, covered = [], set()
    for hook in hooks:
        owner = getattr(hook, "__self__", None)
        plan_of = getattr(owner, "_planned_before_forward", None)
        found = plan_of() if plan_of is not None and hook == owner._before_forward else None
        if found is None:
            planned.append(hook)
            continue
        fn, modules = found
        planned.append(fn)
        covered.update(id(m) for m in modules)
    return [h for h in planned if id(getattr(h, "__self__", None)) not in covered]


def _plain_state(m: Any) -> bool:
    """m keeps its initial state as AbstractRecurrent does (fields `_state`, `_user_initial`,
    a bool `_mask_zero`; its `_initial_state_arrays` marked `plain`)."""
    own = getattr(type(m)._initial_state_arrays, "plain", False)
    fields = m.__dict__
    return own and "_state" in fields and type(fields.get("_mask_zero")) is bool


def _bind_plan(exe: Any, x: np.ndarray) -> tuple[list, int, list]:
    """(arguments with the parameters' arrays bound, the data input's position, [(position,
    binder)] of the arguments bound per call: dropout masks, states, a block whose member was
    rebound (its members concatenated per call))."""
    args = [b([x]) if n.kind == "param" else None for n, b in zip(exe.arg_nodes, exe.binders)]
    dynamic, data_at = [], 0
    blocks = {g.input: g for g in exe.packing.groups}
    for k, (node, bind) in enumerate(zip(exe.arg_nodes, exe.binders)):
        if node.kind == "data":
            data_at = k
        elif node.kind != "param" or (node in blocks and not blocks[node].block.intact):
            dynamic.append((k, bind))
    for k in [data_at] + [k for k, _ in dynamic]:  # (bound per call: this call's not kept)
        args[k] = None
    return args, data_at, dynamic


def _fields_plan(exe: Any) -> tuple | None:
    """(final states [(module, positions)], `output` fields [(module, position)], pending
    per-step fields [(module, by_steps plan)]) of Runtime._write_back in "sequence" mode, or None
    where a module has fields only the general write-back writes (tables, unplanned steps)."""
    outputs, pending = [], []
    for m, output, leaves, others, by_steps in write_plan(exe):
        if output is not None:
            _, tree, pos, _ = output
            if tree != LEAF:
                return None
            outputs.append((m, pos))
        if by_steps is not None:
            pending.append((m, by_steps))
        elif leaves or others:
            return None
    return exe.final_plan(), outputs, pending
