"""Sequencer: applies a module at every step of a sequence, unrolled into one graph (one
sub-graph per timestep), with Torch7's remember/forget semantics for state across calls."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .. import tracing
from .. import validation as check
from ..errors import ShapeError, ValueRangeError
from ..tracing import Var
from .context import current_build
from .module import Module
from .recurrent import HiddenStateOf

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

    Hidden state: `get_hidden_state(t)` & co. reach the recurrent module inside (steps t of the
    last call); `set_grad_hidden_state(t, g)` replaces the gradient step t + 1 sends into the
    state of step t, in the next backward.
    """

    def __init__(self, module: Module):
        super().__init__()
        self.add_child("0", check.module(self, "module", module))
        self.remember_mode = "neither"

    @property
    def module(self) -> Module:
        return self._children["0"]

    def get(self, index: int) -> Module:
        if check.integer(self, "index", index) not in (0, -1):
            raise ValueRangeError(f"a Sequencer holds one module (index 0), not {index}")
        return self.module

    __getitem__ = get

    def remember(self, mode: str = "both") -> Sequencer:
        self.remember_mode = check.choice(self, "remember mode", mode, MODES)
        return self

    def remembers(self) -> bool:
        mode = self.remember_mode
        return mode == "both" or (mode == "train" and self.is_training) or (
            mode == "eval" and not self.is_training)

    def _before_forward(self) -> None:
        if not self.remembers():
            self.module._clear_memory(keep_initial=True)

    def _mode_changed(self) -> None:
        self.module._clear_memory(keep_initial=True)

    def forward(self, input: Any, lengths: Any = None) -> Any:
        """Run over `input`; with `lengths` (one per batch row) a right-padded batch gives each
        row exactly the outputs, final state and gradients of running it alone (outputs past a
        row's length are zeros)."""
        if lengths is None:
            return super().forward(input)
        from .runtime import runtime_of
        return runtime_of(self).forward(input, self._length_mask(input, lengths))

    def _length_mask(self, input: Any, lengths: Any) -> np.ndarray:
        steps = input if isinstance(input, list) else list(np.asarray(input))
        T = len(steps)
        self.expect(T > 0, "expects at least one step, got none")
        first = np.asarray(steps[0])
        lengths = np.asarray(lengths)
        if first.ndim < 2 or lengths.shape != (first.shape[0],) or lengths.dtype.kind not in "iu":
            raise ShapeError(f"{self.describe()}: lengths must be integers, one per batch row "
                             f"({first.shape[0] if first.ndim else '?'}), got {lengths!r}")
        if lengths.min() < 1 or lengths.max() > T:
            raise ValueRangeError(f"{self.describe()}: lengths must lie in [1, {T}], got "
                                  f"{lengths.min()}..{lengths.max()}")
        return (np.arange(T)[:, None] < lengths[None, :]).astype(self.dtype)[..., None]

    def build(self, x: Any, step_mask: Var | None = None) -> Any:
        as_array = isinstance(x, Var)
        if as_array:
            self.expect(x.ndim >= 2, f"expects a (T, batch, features) array or a list of steps, "
                                     f"got shape {x.shape}")
            self.expect(x.shape[0] > 0, f"expects at least one step, got a (T, batch, features) "
                                        f"array with T = 0 (shape {x.shape})")
            steps = []
            for t in range(x.shape[0]):
                with tracing.step(t):  # the slice x[t] belongs to step t in diagrams
                    steps.append(x[t])
        else:
            self.expect(isinstance(x, list) and len(x) > 0, "expects a non-empty list of steps")
            steps = list(x)
        first = steps[0]
        for t, xt in enumerate(steps):
            if isinstance(xt, Var) and isinstance(first, Var) and xt.shape != first.shape:
                raise ShapeError(f"{self.describe()}{tracing_where(t)}: step {t} has shape "
                                 f"{xt.shape} but step 0 has {first.shape}; every step of a "
                                 f"batch must have the same shape")
        ctx = current_build()
        outputs = []
        for t, xt in enumerate(steps):
            with tracing.step(t):
                ctx.step_mask = None if step_mask is None else step_mask[t]
                y = self.module(xt)
                y = y if step_mask is None else y * ctx.step_mask
                outputs.append(F.reshape(y, (1,) + y.shape) if as_array else y)
        ctx.step_mask = None
        return F.concat(outputs, axis=0) if as_array else outputs

    def describe(self) -> str:
        return f"nn.Sequencer @ {self.module.describe()}"

    def __repr__(self) -> str:
        return f"nn.Sequencer @ {repr(self.module)}"


def tracing_where(t: int) -> str:
    scope = tracing.current_scope()
    return f" (in {scope or 'top'!r}, step {t})"
