"""Sequencer: applies a module at every step of a sequence -- by default its step traced once and
run as a loop (nn/rolled.py), with unroll=True one graph with a sub-graph per timestep -- with
Torch7's remember/forget semantics for state across calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import functional as F
from .. import library, tracing
from .. import validation as check
from ..errors import ShapeError, ValueRangeError
from ..tracing import Var
from . import row_select as rows
from .context import current_build
from .module import Module
from .recurrent import AbstractRecurrent, HiddenStateOf
from .roll_api import (
    NotRollable,
    join_segments,
    loop_key,
    restart_states,
    rolled_refusal,
    run_loop,
)
from .settings import choice, optional, rules
from .tree import map_leaves

MODES = ("both", "train", "eval", "neither")


class Sequencer(HiddenStateOf, Module):
    """Decorates `module` to run over a whole sequence.  Torch7: nn.Sequencer.

    Input: a list of T arrays ((D,) or (B, D) each) -> list of T outputs; or a (T, B, D) array
    -> (T, B, H) array. `backward` takes grad_outputs of the same type. The module may be
    recurrent or not, or a whole stack (Sequential of LSTMs).

    Memory: `remember(mode)` with mode "both" | "train" | "eval" | "neither" (the default before
    any call is "neither": state is forgotten before every forward; `remember()` means "both").
    When remembering, the next forward starts from the last state and gradients stop at the
    chunk boundary (truncated BPTT). `forget()` resets; switching training()/evaluate() forgets.

    Program: `unroll=None` (default) or `False` runs the steps as one rolled loop over the step
    template, at every length (compile time and memory flat in T; a new T never recompiles;
    BENCHMARKS.md "Rolled or unrolled" for the per-step cost); `unroll=True` traces every step
    into one unrolled graph (the research baseline). The compile report says which.

    Hidden state: `get_hidden_state(t)` & co. reach the recurrent module inside (steps t of the
    last call); `set_grad_hidden_state(t, g)` replaces the gradient step t + 1 sends into the
    state of step t, in the next backward.
    """

    arg_names = ("input", "length_mask")  # (a call's second argument: the lengths= mask)

    setting_rules = rules(remember_mode=choice(MODES), unroll=optional(check.flag))

    def __init__(self, module: Module, unroll: bool | None = None):
        super().__init__()
        self.add_child("0", check.module(self, "module", module))
        self.remember_mode = "neither"
        self.unroll = unroll

    @property
    def module(self) -> Module:
        return self._children["0"]

    def get(self, index: int) -> Module:
        if check.integer(self, "index", index) not in (0, -1):
            raise ValueRangeError(f"a Sequencer holds one module (index 0), not {index}")
        return self.module

    __getitem__ = get

    def remember(self, mode: str = "both") -> Sequencer:
        self.remember_mode = mode
        return self

    def remembers(self) -> bool:
        mode = self.remember_mode
        return (
            mode == "both"
            or (mode == "train" and self.is_training)
            or (mode == "eval" and not self.is_training)
        )

    remembers.plain = True  # (nn.steady_source spells it out)

    def _before_forward(self) -> None:
        if not self.remembers():
            self.module._clear_memory(keep_initial=True)

    def _planned_before_forward(self) -> tuple[Callable, list] | None:
        """(this hook and the hooks of the recurrent modules inside as one function, those
        modules) for the steady path (nn.steady: planned again whenever the tree changes), or
        None where a module inside clears its memory its own way."""
        return planned_forget(self)

    def _mode_changed(self) -> None:
        self.module._clear_memory(keep_initial=True)

    def forward(self, input: Any, lengths: Any = None) -> Any:
        """Run over `input`; with `lengths` (one per batch row) a right-padded batch gives each
        row exactly the outputs, final state and gradients of running it alone (outputs past a
        row's length are zeros)."""
        if lengths is None:  # (this call holds the lock and made the checks: Module's own body)
            return _MODULE_FORWARD(self, input)
        from .runtime import runtime_of

        return runtime_of(self).forward(input, self._length_mask(input, lengths))

    forward.steady_entry = True  # (one input: Module's forward; locking.locked_method)

    def _length_mask(self, input: Any, lengths: Any) -> np.ndarray:
        steps = input if isinstance(input, list) else list(np.asarray(input))
        T = len(steps)
        self.expect(T > 0, "expects at least one step, got none")
        first = np.asarray(steps[0])
        lengths = np.asarray(lengths)
        ids = first.ndim == 1 and first.dtype.kind in "iu"  # a (B,) step of ids is a batch
        if first.ndim < 2 and not ids:
            raise ShapeError(
                f"{self.describe()}: lengths= needs batched steps (rows on axis 0: (B, ...) "
                f"arrays, or (B,) integer ids), got steps of shape {first.shape}"
            )
        if lengths.shape != (first.shape[0],) or lengths.dtype.kind not in "iu":
            raise ShapeError(
                f"{self.describe()}: lengths must be integers, one per batch row "
                f"({first.shape[0]}), got {lengths!r}"
            )
        if lengths.size and (lengths.min() < 1 or lengths.max() > T):
            raise ValueRangeError(
                f"{self.describe()}: lengths must lie in [1, {T}], got "
                f"{lengths.min()}..{lengths.max()}"
            )
        return (np.arange(T)[:, None] < lengths[None, :]).astype(self.dtype)[..., None]

    def build(self, x: Any, step_mask: Var | None = None) -> Any:
        as_array = isinstance(x, Var)
        if as_array:
            self.expect(
                x.ndim >= 2,
                f"expects a (T, batch, features) array or a list of steps, got shape {x.shape}",
            )
            self.expect(
                x.shape[0] > 0,
                f"expects at least one step, got a (T, batch, features) "
                f"array with T = 0 (shape {x.shape})",
            )
        else:
            self.expect(isinstance(x, list) and len(x) > 0, "expects a non-empty list of steps")
            first = x[0]
            for t, xt in enumerate(x):
                if isinstance(xt, Var) and isinstance(first, Var) and xt.shape != first.shape:
                    raise ShapeError(
                        f"{self.describe()}{tracing_where(t)}: step {t} has shape "
                        f"{xt.shape} but step 0 has {first.shape}; every step of a "
                        f"batch must have the same shape"
                    )
        ctx = current_build()
        if not self.remembers():
            restart_states(self.module, ctx)
        if step_mask is not None:
            x = self._clear_padding(x, as_array, step_mask)
        why = rolled_refusal(self, ctx, x)
        if why is None:
            try:
                return self._build_rolled(ctx, x, as_array, step_mask)
            except NotRollable as e:
                why = str(e)
        ctx.notes.append(f"{self.describe()}: unrolled ({why})")
        ctx.fresh_steps = True
        return self._build_unrolled(ctx, x, as_array, step_mask)

    @staticmethod
    def _clear_padding(v: Any, as_array: bool, step_mask: Var) -> Any:
        """v -- the inputs before the loop, or its outputs after it -- with every float row
        past its row's length exactly +0.0 (gradient exactly 0 there), so the module never sees
        what padding held (NaN, Inf, garbage) and the caller never reads it: one time-batched
        select (inside the loop an input select would keep the input GEMM from being hoisted
        out of it); ids pass (their embeddings' rows are cleared at the outputs)."""
        pad = rows.beyond(step_mask)  # (T, B, 1)
        if as_array:
            return rows.clear_floats(v, F.reshape(pad, pad.shape[:2] + (1,) * (v.ndim - 2)))
        cleared = []
        for t, vt in enumerate(v):
            with tracing.step(t):
                cleared.append(map_leaves(lambda e, t=t: rows.clear_floats(e, pad[t]), vt))
        return cleared

    def _step(self, as_array: bool, masked: bool, clear: bool = True) -> Any:
        """One step, as the loop body: xs = [x_t] (+ [mask_t] with lengths=); `clear`: its
        padded output rows cleared here (unrolled; a loop's are cleared after it)."""

        def call(xs: list, invs: list) -> Any:
            ctx = current_build()
            ctx.step_mask = xs[1] if masked else None
            y = self.module(xs[0])  # (padded input rows already cleared: _clear_padding)
            if masked and clear:
                pad = rows.beyond(ctx.step_mask)
                y = map_leaves(lambda v: rows.clear_floats(v, pad), y)
            ctx.step_mask = None
            if as_array and not isinstance(y, Var):
                raise ShapeError(
                    f"{self.describe()}: a (T, batch, features) array input "
                    f"needs one array output per step, but the module returned "
                    f"a table (list); pass the steps as a list instead"
                )
            return y

        return call

    def _loop_invariants(self) -> list[Var]:
        """Values computed before the loop that every step reads: the rolled loop's invariants
        (the step call gets the body's inputs standing for them as `invs`); none here."""
        return []

    def _build_rolled(self, ctx: Any, x: Any, as_array: bool, step_mask: Var | None) -> Any:
        T = x.shape[0] if as_array else len(x)
        with tracing.step(None):
            stacked = x if as_array else library.stack(x, 0)
        xs = [stacked] + ([step_mask] if step_mask is not None else [])

        def xs_step(t: int) -> list:
            with tracing.step(t):
                xt = x[t]
                return [xt] if step_mask is None else [xt, step_mask[t]]

        invs = self._loop_invariants()
        key = loop_key(self, ctx, xs, invs, as_array)
        masked = step_mask is not None
        segments = run_loop(ctx, key, self._step(as_array, masked, False), T, xs, invs, xs_step)
        y = join_segments(segments, as_array)
        return self._clear_padding(y, as_array, step_mask) if masked else y

    def _build_unrolled(self, ctx: Any, x: Any, as_array: bool, step_mask: Var | None) -> Any:
        if as_array:
            steps = []
            for t in range(x.shape[0]):
                with tracing.step(t):  # the slice x[t] belongs to step t in diagrams
                    steps.append(x[t])
        else:
            steps = list(x)
        call = self._step(as_array, step_mask is not None)
        outputs = []
        for t, xt in enumerate(steps):
            with tracing.step(t):
                mask = [] if step_mask is None else [step_mask[t]]
                y = call([xt] + mask, [])
                outputs.append(F.reshape(y, (1,) + y.shape) if as_array else y)
        return F.concat(outputs, axis=0) if as_array else outputs

    def describe(self) -> str:
        return f"nn.Sequencer @ {self.module.describe()}"

    def __repr__(self) -> str:
        return f"nn.Sequencer @ {self.module!r}"


_MODULE_FORWARD = Module.forward.__wrapped__  # Module.forward without its locking wrapper


def planned_forget(seq: Sequencer) -> tuple[Callable, list] | None:
    """Sequencer._before_forward followed by the AbstractRecurrent hooks of the modules inside
    it, as one function without the _clear_memory recursion: what a forget does to each module
    (Module's and AbstractRecurrent's _clear_memory, keep_initial=True) written into its fields.
    None where a module inside defines its own _clear_memory (it runs the general hook)."""
    plain, recurrent = Module._clear_memory, AbstractRecurrent._clear_memory
    modules = list(seq.module.modules())
    for m in modules:  # (every class on its MRO that defines _clear_memory: one of these two)
        defined = [
            c.__dict__["_clear_memory"] for c in type(m).__mro__ if "_clear_memory" in c.__dict__
        ]
        if "_clear_memory" in m.__dict__ or any(f not in (plain, recurrent) for f in defined):
            return None
    every = [m.__dict__ for m in modules]
    cells = [m for m in modules if type(m)._clear_memory is recurrent]
    covered = [m for m in cells if _hook_of(m) is AbstractRecurrent._before_forward]
    cell_fields = [(m.__dict__, m) for m in cells]
    covered_fields = [m.__dict__ for m in covered]

    def hook() -> None:
        if seq.remembers():  # (no forget: the recurrent modules' own hooks only)
            for fields in covered_fields:
                if callable(fields["_grad_hidden"]):
                    fields["_grad_hidden"] = {}
            return
        for fields in every:  # Module._clear_memory
            rt = fields.get("_runtime")
            if rt is not None:
                rt.history = []
                rt.dropped = 0
        for fields, m in cell_fields:  # AbstractRecurrent._clear_memory(keep_initial=True)
            fields["_state"] = None
            fields["outputs"], fields["inputs"] = [], []
            fields["states"] = {name: [] for name in m.state_names}
            fields["_n_steps"] = 0
            fields["_grad_hidden"] = {}

    hook.plan = (seq, every, [(f, tuple(m.state_names)) for f, m in cell_fields], covered_fields)
    return hook, covered  # (hook.plan: what nn.steady_source spells out in place of a call)


def _hook_of(m: Module) -> Any:
    """The function m's _before_forward runs (an instance's own, or its class's)."""
    own = m.__dict__.get("_before_forward")
    return own if own is not None else type(m)._before_forward


def tracing_where(t: int) -> str:
    scope = tracing.current_scope()
    return f" (in {scope or 'top'!r}, step {t})"
