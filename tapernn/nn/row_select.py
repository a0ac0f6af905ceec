"""Row masks as selects, not products: a padded row (past a Sequencer `lengths=` row's end,
or all zeros under MaskZero / mask_zero()) is exactly +0.0, and whatever it held -- NaN, Inf,
garbage -- reaches neither the kept rows, nor the state, nor any gradient (a product gives
NaN * 0 = NaN, and -0.0). With `lengths=` the Sequencer clears the padded input rows before its
loop and the padded outputs after it (one time-batched select each); inside the loop the state
hold stays a product of finite values (a select there would cost the step loop its
translation: nn/recurrent.py).

Which rows are padding: a row whose entries are all (+/-) zero, as Torch7's MaskZero
(`norm(row) == 0`): a row holding NaN is NOT padding (it is kept, so its NaN shows)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..tracing import Var


def zero_rows(x: Var, axes: tuple[int, ...], keepdims: bool = False) -> Var:
    """Boolean: True where every entry of x over `axes` is +/-0 (a NaN row is not zero). The
    largest |entry|, not the norm or sum: the same test, exact in any order, so a step loop
    runs it in its own loop with the same bits (backends/step_selects.py)."""
    return F.equal(F.max(F.abs(x), axes, keepdims=keepdims), 0)


def beyond(step_mask: Var) -> Var:
    """The (B, 1) boolean padding mask of a Sequencer's float 0/1 length mask (1: real step)."""
    return F.equal(step_mask, 0)


def _aligned(pad: Var, like: Var) -> Var:
    """`pad` ((B,), (B, 1) or ()) shaped to broadcast over the leading (row) axis of `like`."""
    if pad.ndim == 0 or pad.ndim == like.ndim:
        return pad
    return F.reshape(pad, (pad.shape[0],) + (1,) * (like.ndim - 1))


def clear(v: Any, pad: Var) -> Any:
    """v with its padded rows exactly 0 (gradient: exactly 0 there, g elsewhere)."""
    if not isinstance(v, Var):
        return v
    return F.where(_aligned(pad, v), 0, v)


def clear_floats(v: Any, pad: Var) -> Any:
    """clear() for a float value; ids and flags pass unchanged (an embedding's gradient is
    selected at its output; ids are no per-step residuals of a loop's backward)."""
    return clear(v, pad) if getattr(getattr(v, "dtype", None), "kind", "") == "f" else v


def held(new: Var, old: Var, keep: Var) -> Var:
    """A state past a row's length (Sequencer `lengths=`): `new` where the float 0/1 `keep` ((B,)
    or (B, 1)) is 1, `old` where it is 0 -- products, not a select: the Sequencer cleared the
    padded inputs, so every value here is finite, and the step loop keeps its translation."""
    k = _aligned(keep, new)
    return new * k + old * (1 - k)


def masked_name(described: str, masked: bool) -> str:
    """A module's one-line description saying it masks zero rows, as SeqLSTM's flags:
    "nn.FastLSTM(3 -> 4)" -> "nn.FastLSTM(3 -> 4, mask_zero)", "nn.Recurrence @ .." ->
    "nn.Recurrence(mask_zero) @ ..". (Diagrams read it back: `says_masked`.)"""
    if not masked:
        return described
    head, at, inner = described.partition(" @ ")
    head = f"{head[:-1]}, mask_zero)" if head.endswith(")") else f"{head}(mask_zero)"
    return head + at + inner


def says_masked(described: str) -> bool:
    """Whether a module's description (its part before " @ ") was marked by masked_name."""
    head = described.split(" @ ")[0]
    return head.endswith((", mask_zero)", "(mask_zero)"))
