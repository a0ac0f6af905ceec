"""Bidirectional sequencers: BiSequencer (forward and reversed passes merged per step) and
BiSequencerLM (each step sees the past from one side and the future from the other)."""

from __future__ import annotations

import copy
from typing import Any

from .. import functional as F
from .. import library, tracing
from .. import validation as check
from ..errors import ArgumentError, StateError
from ..tracing import Var
from .context import current_build
from .module import Module
from .roll_api import (
    NotRollable,
    join_segments,
    loop_key,
    restart_states,
    rolled_refusal,
    run_loop,
)
from .settings import optional, rules
from .tables import JoinTable


def fresh_clone(module: Module) -> Module:
    """A deep copy with newly initialised parameters (Torch7: m:clone():reset())."""
    clone = copy.deepcopy(module)
    for m in clone.modules():
        m._runtime = None
    clone.forget()
    return clone.reset()


def _refuse_shared_recurrence(owner: Module, fwd: Module, bwd: Module) -> None:
    """One recurrent module cannot run both directions (each needs its own state; before, the
    backward pass silently continued from the forward pass's final state)."""
    ours = {id(m) for m in fwd.modules() if m.is_recurrent}
    if any(id(m) in ours for m in bwd.modules() if m.is_recurrent):
        raise ArgumentError(
            f"nn.{type(owner).__name__}: fwd and bwd share a recurrent module, but each "
            f"direction needs its own state; to tie their weights, give bwd its own module "
            f"holding the same Parameter objects (e.g. bwd = copy.deepcopy(fwd), then set "
            f"each of its parameters to fwd's)"
        )


class _Bidirectional(Module):
    setting_rules = rules(unroll=optional(check.flag))
    unroll: bool | None = None  # True: every step traced (baseline); None / False: rolled

    def __init__(
        self,
        fwd: Module,
        bwd: Module | None = None,
        merge: Module | None = None,
        unroll: bool | None = None,
    ):
        super().__init__()
        if unroll is not None:  # (README: a Sequencer's, BiSequencer's and Repeater's argument)
            self.unroll = unroll
        for name, m in (("fwd", fwd), ("bwd", bwd), ("merge", merge)):
            if m is not None or name == "fwd":
                check.module(self, name, m)
        if bwd is not None:
            _refuse_shared_recurrence(self, fwd, bwd)
        self.add_child("fwd", fwd)
        self.add_child("bwd", bwd if bwd is not None else fresh_clone(fwd))
        self.add_child("merge", merge if merge is not None else JoinTable(-1))

    def forward(self, input: Any, lengths: Any = None) -> Any:
        if lengths is not None:  # (a Sequencer's keyword: refused by name, not a bare TypeError)
            raise ArgumentError(
                f"{self.describe()} takes no lengths=: pad with zero rows and build it over "
                f"cells with mask_zero() (each direction then runs a row's real steps from a "
                f"zero state, as alone), or run rows of one length together"
            )
        return Module.forward(self, input)

    def remember(self, mode: str = "both") -> Module:
        """Refused by name (was a bare AttributeError): Element-RNN's BiSequencer has none."""
        raise StateError(
            f"{self.describe()} has no remember() (Element-RNN's {type(self).__name__} neither): "
            f"each call is one whole sequence, and its backward direction starts from that "
            f"sequence's last step, so it cannot continue a previous chunk. Pass the whole "
            f"sequence; to carry state across chunks in one direction use "
            f"nn.Sequencer(cell).remember({mode!r})"
        )

    def _before_forward(self) -> None:  # each call is a whole, independent sequence
        self._children["fwd"]._clear_memory(keep_initial=True)
        self._children["bwd"]._clear_memory(keep_initial=True)

    def _restart(self, ctx: Any) -> None:
        """Both directions start from zeros even when this call already ran their modules
        elsewhere in the model (as its forget before every forward)."""
        restart_states(self._children["fwd"], ctx)
        restart_states(self._children["bwd"], ctx)

    def _steps(self, x: Any) -> tuple[list, bool]:
        if isinstance(x, Var):
            self._expect_array(x)
            return [x[t] for t in range(x.shape[0])], True
        self.expect(isinstance(x, list) and len(x) > 0, "expects a non-empty list of steps")
        return list(x), False

    def _expect_array(self, x: Var) -> None:
        self.expect(x.ndim >= 2, f"expects a (T, batch, features) array or a list, got {x.shape}")
        self.expect(  # (was "stack: needs at least one value", naming no module)
            x.shape[0] > 0,
            f"expects at least one step, got a (T, batch, features) array with T = 0 "
            f"(shape {x.shape})",
        )

    def _run(self, module: Module, steps: list, order: range) -> dict[int, Var]:
        out = {}
        for t in order:
            with tracing.step(t):
                out[t] = module(steps[t])
        return out

    def _merge(self, pairs: list, as_array: bool) -> Any:
        merged = []
        for t, pair in enumerate(pairs):
            with tracing.step(t):
                merged.append(self._children["merge"](pair))
        return library.stack(merged, 0) if as_array else merged

    def describe(self) -> str:
        c = self._children
        return f"nn.{type(self).__name__}({c['fwd'].describe()}, {c['bwd'].describe()})"


class BiSequencer(_Bidirectional):
    """y_t = merge([fwd_t, bwd_t]): fwd runs over x_0..x_{T-1}, bwd over x_{T-1}..x_0.

    `bwd=None` clones `fwd` with fresh parameters; `merge` defaults to JoinTable(-1) (concat);
    use CAddTable() to sum.  Shapes: list of T (B, D) or a (T, B, D) array -> (T, B, 2H) with
    the default merge.  Torch7: nn.BiSequencer.
    """

    def build(self, x: Any) -> Any:
        ctx = current_build()
        self._restart(ctx)
        why = rolled_refusal(self, ctx, x)
        if why is None:
            try:
                return self._build_rolled(ctx, x)
            except NotRollable as e:
                why = str(e)
        ctx.notes.append(f"{self.describe()}: unrolled ({why})")
        ctx.fresh_steps = True
        steps, as_array = self._steps(x)
        T = len(steps)
        f = self._run(self._children["fwd"], steps, range(T))
        b = self._run(self._children["bwd"], steps, range(T - 1, -1, -1))
        return self._merge([[f[t], b[t]] for t in range(T)], as_array)

    def _build_rolled(self, ctx: Any, x: Any) -> Any:
        """fwd as a loop, bwd as a reverse loop, merge as a loop over both (nn.rolled)."""
        as_array = isinstance(x, Var)
        if as_array:
            self._expect_array(x)
        else:
            self.expect(isinstance(x, list) and len(x) > 0, "expects a non-empty list of steps")
        T = x.shape[0] if as_array else len(x)
        with tracing.step(None):
            xs = x if as_array else library.stack(x, 0)

        def one(m: Module) -> Any:
            def call(v: list, _: list) -> Any:
                y = m(v[0])
                if not isinstance(y, Var):
                    raise NotRollable("the step returns a table")
                return y

            return call

        def step_of(stacked: list) -> Any:
            def at(t: int) -> list:
                with tracing.step(t):
                    return [v[t] for v in stacked]

            return at

        c = self._children
        f = run_loop(
            ctx,
            loop_key(c["fwd"], ctx, [xs], [], "fwd"),
            one(c["fwd"]),
            T,
            [xs],
            [],
            (lambda t: [x[t]]) if not as_array else step_of([xs]),
        )
        b = run_loop(
            ctx,
            loop_key(c["bwd"], ctx, [xs], [], "bwd"),
            one(c["bwd"]),
            T,
            [xs],
            [],
            (lambda t: [x[t]]) if not as_array else step_of([xs]),
            reverse=True,
        )
        pair = [join_segments(f, True), join_segments(b, True)]
        merged = run_loop(
            ctx,
            loop_key(c["merge"], ctx, pair, [], "merge"),
            lambda v, _: c["merge"](v),
            T,
            pair,
            [],
            step_of(pair),
        )
        return join_segments(merged, as_array)


class BiSequencerLM(_Bidirectional):
    """For language models: step t merges fwd's output for x_{t-1} (zeros at t = 0) with bwd's
    output for x_{t+1} (zeros at t = T-1), so no step sees its own input.  Torch7: nn.BiSequencerLM.
    """

    def build(self, x: Any) -> Any:
        self._restart(current_build())
        steps, as_array = self._steps(x)
        T = len(steps)
        self.expect(T >= 2, "needs at least two steps")
        f = self._run(self._children["fwd"], steps, range(T - 1))
        b = self._run(self._children["bwd"], steps, range(T - 1, 0, -1))
        pairs = []
        for t in range(T):
            left = f[t - 1] if t > 0 else F.zeros_like(f[0])
            right = b[t + 1] if t < T - 1 else F.zeros_like(b[T - 1])
            pairs.append([left, right])
        return self._merge(pairs, as_array)
