"""Repeater (the same input at every step), RepeaterCriterion (the same target at every step)
and Recursor (any module as a step-wise recurrent module)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import tracing
from .. import validation as check
from ..errors import ShapeError
from ..tracing import Var
from .context import current_build
from .criteria import Criterion
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
from .settings import optional, rules, size


class Repeater(Module):
    """Feeds the same input to `module` for `n_step` steps; returns the list of outputs. The
    input's gradient is the sum over steps. Forgets before every forward.  Torch7: nn.Repeater.
    The steps run as one loop over the step template (nn.rolled); `unroll = True` traces each."""

    unroll: bool | None = None  # True: every step traced (baseline); None / False: rolled

    setting_rules = rules(n_step=size(), unroll=optional(check.flag))

    def __init__(self, module: Module, n_step: int, unroll: bool | None = None):
        super().__init__()
        self.add_child("0", check.module(self, "module", module))
        self.n_step = n_step
        if unroll is not None:  # (README: a Sequencer's, BiSequencer's and Repeater's argument)
            self.unroll = unroll

    def _before_forward(self) -> None:
        self._children["0"]._clear_memory(keep_initial=True)

    def build(self, x: Any) -> list:
        ctx = current_build()
        restart_states(self._children["0"], ctx)  # (it forgets before every forward)
        why = rolled_refusal(self, ctx, [x] if isinstance(x, Var) else x)
        if why is None and isinstance(x, Var):
            m = self._children["0"]
            try:  # the input is an invariant of the loop; no xs
                segments = run_loop(
                    ctx,
                    loop_key(self, ctx, [], [x]),
                    lambda _, inv: m(inv[0]),
                    self.n_step,
                    [],
                    [x],
                    lambda t: [],
                )
                return join_segments(segments, False)
            except NotRollable as e:
                why = str(e)
        ctx.notes.append(f"{self.describe()}: unrolled ({why or 'a table input'})")
        ctx.fresh_steps = True
        out = []
        for t in range(self.n_step):
            with tracing.step(t):
                out.append(self._children["0"](x))
        return out

    def describe(self) -> str:
        return f"nn.Repeater({self._children['0'].describe()}, {self.n_step})"


class RepeaterCriterion(Criterion):
    """Applies `criterion` with the same target to every step of the input; sums the losses."""

    def __init__(self, criterion: Criterion):
        super().__init__()
        self.add_child("0", check.module(self, "criterion", criterion, criterion=True))

    def check_targets(self, input: Any, target: Any) -> None:
        steps = input if isinstance(input, list) else list(input)
        if not steps:
            raise ShapeError(f"{self.describe()}: expects at least one step, got none")
        for x in steps:
            self._children["0"].check_targets(x, target)

    def build(self, xs: Any, target: Any) -> Any:
        steps = xs if isinstance(xs, list) else [xs[t] for t in range(xs.shape[0])]
        losses = []
        for t, x in enumerate(steps):
            with tracing.step(t):
                losses.append(self._children["0"].apply(x, target))
        return F.add_n(losses)

    def describe(self) -> str:
        return f"nn.RepeaterCriterion @ {self._children['0'].describe()}"


class Recursor(HiddenStateOf, AbstractRecurrent):
    """Makes any module step-wise recurrent: each forward is one step sharing the parameters,
    backward runs once per step in reverse order (BPTT), `outputs`/`inputs` hold the steps.
    Recurrent modules inside keep their own state; `get_hidden_state`, `set_initial_state`,
    `get_grad_initial_state`, `set_grad_hidden_state` and `get_grad_hidden_state` reach the
    recurrent module inside (the module itself, or the one recurrent module in it).
    Torch7: nn.Recursor."""

    state_names = ()
    _drawn_whole = False  # (diagrams draw the module it steps)

    def __init__(self, module: Module):
        super().__init__()
        self.add_child("0", check.module(self, "module", module))

    def build(self, x: Any) -> Any:
        ctx = current_build()
        t = ctx.next_step(self)
        out = self._children["0"](x)
        ctx.probe(self, "inputs", t, x)
        ctx.probe(self, "outputs", t, out)
        return out

    def describe(self) -> str:
        return f"nn.Recursor @ {self._children['0'].describe()}"

    def __repr__(self) -> str:  # (its module's tree, as a Sequencer's)
        return f"nn.Recursor @ {self._children['0']!r}"
