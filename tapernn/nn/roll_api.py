"""What the rolled loops' owners (Sequencer, Repeater, BiSequencer) and the runtime share: when
a loop may be rolled, the key its templates are cached under, its outputs as the owner returns
them, and a stacked field's per-step values (nn.rolled traces and emits the loops)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import tracing
from ..errors import StateError
from ..tracing import Var
from .binding import _state_signature
from .context import BuildContext
from .rolled import NotRollable, Stacked, _StepContext, run_loop
from .tree import LEAF, flatten, unflatten

__all__ = [
    "NotRollable",
    "join_segments",
    "loop_key",
    "restart_states",
    "rolled_refusal",
    "run_loop",
    "stacked_fields",
]


def rolled_refusal(owner: Any, ctx: BuildContext, x: Any) -> str | None:
    """None when `owner`'s steps may be traced as a loop, else why they are unrolled. Every
    length is rolled unless `owner.unroll` is True (the unrolled research baseline): measured
    side by side (BENCHMARKS.md, "Rolled or unrolled"), the rolled training step costs about
    what the unrolled one does at (32, 50, 256) and (32, 50, 512) f32, ~1.2x at (1, 50, 5) and
    ~1.4x at (1, 5, 5) for LSTM, ~1.2x for FastLSTM (fixed per-call work; BENCHMARKS.md "The
    rolled step's fixed cost"), while the unrolled program's compile time grows
    with T and every new length compiles again."""
    if getattr(owner, "unroll", None):
        return "unroll=True"
    if ctx.unroll:
        return "the unrolled view"
    if ctx.taps:
        return "a state-gradient variant (set_grad_hidden_state / get_grad_hidden_state)"
    if ctx.history_mode or isinstance(ctx, _StepContext):
        return "inside another loop's step"
    if isinstance(x, list) and not all(isinstance(v, Var) for v in x):
        return "tables as steps"
    if any(isinstance(v, Var) and 0 in v.shape for v in (x if isinstance(x, list) else [x])):
        return "an empty input (a dimension of size 0)"  # (the loop's slabs assume rows)
    return None


def loop_key(owner: Any, ctx: BuildContext, xs: list, invs: list, *extra: Any) -> tuple:
    """What a loop's templates depend on besides T: the step's input slices, mode, dtype,
    the states it starts from and how each recurrent module inside starts."""
    inside = list(owner.modules())
    return (
        owner,
        tuple((v.shape[1:], v.dtype.str) for v in xs),
        tuple((v.shape, v.dtype.str) for v in invs),
        ctx.training,
        owner.dtype.str,
        tuple((id(m), tuple(v.shape for v in ctx.states[m])) for m in inside if m in ctx.states),
        tuple(_state_signature(m) for m in inside if m.is_recurrent and hasattr(m, "state_names")),
        extra,
    )


def join_segments(segments: list, as_array: bool) -> Any:
    """A loop's outputs as the Sequencer returns them: (T, ...) for an array input (one scan:
    its stacked output as is), else a list of T step outputs (views of the stacked output)."""
    if as_array:
        parts = []
        for seg in segments:
            if seg[0] == "step":
                with tracing.step(seg[1]):
                    parts.append(F.reshape(seg[2], (1,) + seg[2].shape))
            else:
                parts.append(seg[3])
        if len(parts) == 1:
            return parts[0]
        with tracing.step(None):
            return F.concat(parts, axis=0)
    out = []
    for seg in segments:
        if seg[0] == "step":
            out.append(seg[2])
            continue
        for j in range(seg[2]):
            with tracing.step(seg[1] + j):
                out.append(unflatten(*_rows_of(seg[3], j)))
    return out


def _rows_of(stacked: Any, j: int) -> tuple:
    leaves, tree = flatten(stacked)
    return tree, [v[j] for v in leaves]


def stacked_fields(name: str, at: Stacked, tree: Any, outs: Any) -> list:
    """A stacked probe's per-step field values: views of the rows, one per module step (the
    rows split by NumPy's own iteration: T views cost microseconds, not a Python index each)."""
    rows = [list(a[::-1] if at.reverse else a) for a in outs]
    values = rows[0] if tree == LEAF else [unflatten(tree, list(r)) for r in zip(*rows)]
    steps = range(at.start, at.start + at.n * at.stride, at.stride)
    return [(name, t, v) for t, v in zip(steps, values)]


def restart_states(module: Any, ctx: Any) -> None:
    """An owner that forgets before each forward (a Sequencer not remembering, a Repeater)
    starts its recurrent modules from zeros even when this call already ran them (one module in
    two places of a model: Torch7's Sequencer and Repeater call forget() at each forward); its
    `_before_forward` hook only forgets what earlier calls left."""
    for m in module.modules():
        state = ctx.states.get(m)
        if state is not None and ctx.steps.get(m, 0):  # (ran already: not a given h0 / c0)
            if getattr(m, "_user_initial", None) is not None:
                raise StateError(
                    f"{m.describe()} runs in two places of one model and has an initial "
                    f"state set (set_initial_state): give each place its own module (they "
                    f"may share Parameter objects)"
                )
            ctx.states[m] = tuple(F.zeros(v.shape, v.dtype) for v in state)
