"""NormStabilizer: an identity recurrent module whose backward adds the gradient of Krueger &
Memisevic's norm-stabilising penalty.  Torch7: nn.NormStabilizer(beta) (rnn)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import library
from ..tracing import Var
from .context import current_build
from .recurrent import AbstractRecurrent
from .settings import number, rules


class NormStabilizer(AbstractRecurrent):
    """y_t = h_t; in training, backward adds the gradient of

        β Σ_{t≥1} mean_b (‖h_t‖ − ‖h_{t−1}‖)²      (‖·‖ over features, mean over the batch)

    to each h_t — summed over the step pairs, not divided by the number of steps, as Torch7
    (whose reported loss divides by T but whose gradients do not). Put it after a recurrent
    layer, step-wise or in a Sequencer; the first step (after forget) has no pair. When a
    Sequencer remembers, the pair across the chunk boundary adds to the newer step only. With a
    Sequencer's `lengths=`, a row adds no pair past its length (the mean stays over the whole
    batch: each row's gradients are those of running it alone with beta / B).

    Shapes: h_t (B, H) (batch only, as Torch7).  The penalty reaches the gradients through
    `tn.functional.add_loss`, so no backward is written by hand.
    """

    setting_rules = rules(beta=number("non-negative"))

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def state_shapes(self, x: Var) -> list[tuple[int, ...]]:
        return [tuple(x.shape)]

    def build(self, x: Any) -> Any:
        self.expect(
            isinstance(x, Var) and x.ndim == 2,
            f"expects a (batch, features) array, got {getattr(x, 'shape', type(x).__name__)}",
        )
        ctx = current_build()
        if self not in ctx.states and self._initial_state_arrays() is None:  # no pair yet
            ctx.set_state(self, (x,))
            t = ctx.next_step(self)
            for field in ("inputs", "outputs", "state:h"):
                ctx.probe(self, field, t, x)
            return x
        return super().build(x)

    def step_forward(self, x: Var, state: tuple) -> tuple[Var, tuple]:
        ctx = current_build()
        if not (ctx.training and self.is_training):  # its own mode too (Torch7)
            return x, (x,)
        keep = ctx.step_mask  # (B, 1) with lengths=: 0 past a row's length, where x is zeros
        diff = _norm(x) - _norm(state[0])
        if keep is not None:  # no pair past a row's length; the mean stays over the batch
            diff = diff * F.reshape(keep, (x.shape[0],))  # (finite: padded inputs cleared)
        return F.add_loss(x, self.beta * library.mean(diff * diff)), (x,)

    def extra_repr(self) -> str:
        return f"({self.beta})"


def _norm(v: Var) -> Var:
    """‖v‖ over the last axis, with gradient 0 (not NaN) at a zero row (one zeroed by
    `lengths=` or `mask_zero()`: d‖v‖/dv there is 0/0, and 0 * NaN is NaN)."""
    s = F.sum(v * v, -1)
    pos = F.greater(s, 0)
    return F.where(pos, F.sqrt(F.where(pos, s, 1.0)), 0.0)
