"""RecurrentAttention: the recurrent attention model (Mnih et al. 2014) as Torch7 rnn's
nn.RecurrentAttention -- an action module picks where to look from the previous hidden state,
an rnn reads `[input, action]`; all n_step steps are one traced graph."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import tracing
from .. import validation as check
from ..errors import ShapeError
from ..tracing import Var
from .module import Module
from .settings import rules, size


def _shape(owner: Module, name: str, value: Any) -> tuple[int, ...]:
    """A hidden state's shape: a size, or a tuple of sizes."""
    if isinstance(value, (tuple, list)):
        return check.sizes(owner, name, value)
    return (check.size(owner, name, value),)


class RecurrentAttention(Module):
    """Runs `rnn([x, action(h_{t-1})])` for `n_step` steps; h_{-1} = zeros of shape
    (batch,) + hidden_size, so step 0's action sees zeros.  Torch7: nn.RecurrentAttention(rnn,
    action, nStep, hiddenSize).

    `action` is typically Linear -> HardTanh -> ReinforceNormal (trained by REINFORCE through
    `reinforce(reward)`, e.g. from VRClassReward); `rnn` a recurrent module taking `[x, location]`
    (e.g. nn.Recurrent over a glimpse network). Both are forgotten before every forward.
    The gradient w.r.t. the action's input flows into the previous hidden state, as the original.

    Shapes: x (B, ...) -> a list of n_step hidden states, each (B,) + hidden_size.
    """

    setting_rules = rules(n_step=size(), hidden_size=lambda owner, name, v: _shape(owner, name, v))

    def __init__(self, rnn: Module, action: Module, n_step: int, hidden_size: int | tuple):
        super().__init__()
        self.add_child("rnn", check.module(self, "rnn", rnn))
        self.add_child("action", check.module(self, "action", action))
        self.n_step, self.hidden_size = n_step, hidden_size

    @property
    def rnn(self) -> Module:
        return self._children["rnn"]

    @property
    def action(self) -> Module:
        return self._children["action"]

    def _before_forward(self) -> None:
        for m in (self._children["rnn"], self._children["action"]):
            m._clear_memory(keep_initial=True)  # Torch7: rnn:forget(), action:forget()

    def _mode_changed(self) -> None:
        self._before_forward()

    def build(self, x: Any) -> list:
        self.expect(
            isinstance(x, Var) and x.ndim >= 1,
            f"expects a batched array input (batch, ...), got "
            f"{getattr(x, 'shape', type(x).__name__)}",
        )
        rnn, action = self._children["rnn"], self._children["action"]
        dtype = x.dtype if x.dtype.kind == "f" else self.dtype
        h = F.zeros((x.shape[0],) + self.hidden_size, dtype)
        outputs = []
        for t in range(self.n_step):
            with tracing.step(t):
                h = rnn([x, action(h)])
                if not (isinstance(h, Var) and h.shape == (x.shape[0],) + self.hidden_size):
                    raise ShapeError(
                        f"{self.describe()} (step {t}): the rnn must return "
                        f"{(x.shape[0],) + self.hidden_size} (batch + hidden_size), "
                        f"got {getattr(h, 'shape', type(h).__name__)}"
                    )
                outputs.append(h)
        return outputs

    def extra_repr(self) -> str:
        return f"(n_step={self.n_step}, hidden_size={self.hidden_size})"
