"""Recurrent modules (Torch7's AbstractRecurrent) and `Cell`, the base for symbolic cells.

A recurrent module threads its state through the build context: each symbolic call is one
step. Stepped directly (`forward(x_t)` per step) it keeps a history for BPTT; inside a Sequencer
the whole sequence is one unrolled graph.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .. import validation as check
from ..errors import ShapeError, StateError
from ..tracing import Var
from .context import current_build
from .module import Module


class StepCount(int):
    """`cell.step`: the number of forwarded steps (an int) that is also the cell's step function,
    so `self.step(x, h)` inside a cell and `lstm.step == 3` outside both read naturally."""

    def __new__(cls, value: int, fn: Any = None):
        obj = super().__new__(cls, value)
        obj._fn = fn
        return obj

    def __call__(self, *args: Any) -> Any:
        if self._fn is None:
            raise TypeError("this recurrent module has no step function")
        return self._fn(*args)


class _CellStep:
    """A Cell subclass's `step`: read on an instance, the StepCount whose call runs *this*
    class's step function, so `super().step(x, h)` in a subclass reaches the parent's."""

    def __init__(self, fn: Any):
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self.fn
        return StepCount(obj._n_steps, self.fn.__get__(obj, owner))


class AbstractRecurrent(Module):
    """State-carrying module: `outputs[t]`, `inputs[t]`, `states[name][t]`, `step`, `forget()`."""

    is_recurrent = True
    state_names: tuple[str, ...] = ("h",)

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list = []
        self.inputs: list = []
        self.states: dict[str, list] = {name: [] for name in self.state_names}
        self._n_steps = 0
        self._state: tuple[np.ndarray, ...] | None = None          # remembered: where to go on
        self._user_initial: tuple[np.ndarray, ...] | None = None   # set_initial_state
        self._grad_initial: tuple[np.ndarray, ...] | None = None   # d loss / d initial state
        self._extra_state_grads: dict[int, tuple[np.ndarray, ...]] = {}
        self._mask_zero = False
        self.rho: int | None = None

    @property
    def step(self) -> StepCount:
        return StepCount(self._n_steps, getattr(self, "_cell_step", None))

    @property
    def cells(self) -> list:
        if "c" not in self.states:
            raise AttributeError(f"{self.describe()} has no cell state (states: {self.state_names})")
        return self.states["c"]

    # ---- symbolic step -------------------------------------------------------------------------

    def state_shapes(self, x: Var) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def step_forward(self, x: Var, state: tuple[Var, ...]) -> tuple[Var, tuple[Var, ...]]:
        """(output, new state) for one step; subclasses implement."""
        raise NotImplementedError

    def build(self, x: Any) -> Any:
        ctx = current_build()
        state = ctx.state_of(self, self.state_shapes(x), self._state_dtype(x))
        t = ctx.next_step(self)
        out, new_state = self.step_forward(x, state)
        out, new_state = self._apply_masks(ctx, x, out, state, new_state)
        ctx.set_state(self, new_state)
        ctx.probe(self, "inputs", t, x)
        ctx.probe(self, "outputs", t, out)
        for name, value in zip(self.state_names, new_state):
            ctx.probe(self, "state:" + name, t, value)
        return out

    def _apply_masks(self, ctx: Any, x: Var, out: Var, old: tuple, new: tuple) -> tuple:
        if self._mask_zero:  # an all-zero input row: zero output, state reset for that row
            keep = F.cast(F.greater(F.sum(F.abs(x), -1, keepdims=True), 0), out.dtype)
            out, new = out * keep, tuple(s * keep for s in new)
        if ctx.step_mask is not None:  # past a row's length: zero output, state held
            m = ctx.step_mask
            out = out * m
            new = tuple(m * s + (1 - m) * o for s, o in zip(new, old))
        return out, new

    def _state_dtype(self, x: Any) -> np.dtype:
        return x.dtype if isinstance(x, Var) and x.dtype.kind == "f" else self.dtype

    # ---- runtime state ---------------------------------------------------------------------------

    def _initial_state_arrays(self) -> tuple[np.ndarray, ...] | None:
        return self._state if self._state is not None else self._user_initial

    def _store_state(self, state: tuple[np.ndarray, ...]) -> None:
        self._state = state

    def _write_fields(self, items: list, mode: str) -> None:
        """Record per-step values. mode "sequence": a Sequencer call (fields hold its T steps);
        "append": step-wise training (history for BPTT); "latest": step-wise evaluation (only the
        newest step is kept, so sampling thousands of steps uses constant memory)."""
        n_new = sum(1 for name, _, _ in items if name == "outputs")
        if mode != "append":
            self.outputs, self.inputs = [], []
            self.states = {name: [] for name in self.state_names}
        for name, t, value in sorted(items, key=lambda it: it[1]):
            if name == "outputs":
                self.outputs.append(value)
            elif name == "inputs":
                self.inputs.append(value)
            else:
                self.states[name.split(":", 1)[1]].append(value)
        self._n_steps = n_new if mode == "sequence" else self._n_steps + n_new
        if mode == "append" and self.rho is not None and len(self.outputs) > self.rho:
            # older steps are dropped (None) but keep their places: outputs[t] is still step t
            for values in [self.outputs, self.inputs, *self.states.values()]:
                for k in range(len(values) - self.rho - n_new, len(values) - self.rho):
                    if k >= 0:
                        values[k] = None

    def _clear_memory(self, keep_initial: bool) -> None:
        self._state = None
        self.outputs, self.inputs = [], []
        self.states = {name: [] for name in self.state_names}
        self._n_steps = 0
        if not keep_initial:
            self._user_initial = None
            self._grad_initial = None
            self._extra_state_grads = {}
        super()._clear_memory(keep_initial)

    def mask_zero(self) -> AbstractRecurrent:
        """Rows whose step input is all zeros output zeros and reset that row's state (so pad
        variable-length batches on the left).  Torch7: rnn:maskZero()."""
        self._mask_zero = True
        return self

    def max_bptt_step(self, rho: int | None) -> AbstractRecurrent:
        """In step-wise use keep at most `rho` steps of history for BPTT (None: unbounded).
        Older steps' `outputs[t]`, `inputs[t]` and states become None (indices stay absolute)."""
        self.rho = check.size(self, "rho", rho, allow_none=True)
        return self

    # ---- hidden-state API ------------------------------------------------------------------------

    def get_hidden_state(self, t: int = -1) -> tuple[np.ndarray, ...]:
        """The state after step t (0-based; negative from the end), a tuple in `state_names` order."""
        n = len(self.outputs)
        if not -n <= check.integer(self.describe(), "t", t) < n:
            raise StateError(f"{self.describe()}: no step {t}; {n} steps are recorded")
        if self.outputs[t] is None:
            raise StateError(f"{self.describe()}: step {t} was dropped; max_bptt_step keeps the "
                             f"last {self.rho} steps")
        return tuple(self.states[name][t] for name in self.state_names)

    def set_initial_state(self, state: Any) -> AbstractRecurrent:
        """Start the next sequence from `state` (tuple in `state_names` order) instead of zeros,
        until forget()."""
        self._user_initial = check.state_arrays(self.describe(), "state", state,
                                                self.state_names, self.dtype)
        self._check_state_sizes(self._user_initial)
        self._state = None
        self._grad_initial = None
        return self

    def _check_state_sizes(self, state: tuple[np.ndarray, ...]) -> None:
        """Hook: Cells know their states' sizes before any forward."""

    def get_grad_initial_state(self) -> tuple[np.ndarray, ...]:
        """d loss / d(initial state set by set_initial_state), once backward has reached step 0."""
        if self._grad_initial is None:
            raise StateError(f"{self.describe()}: no gradient for the initial state yet; call "
                             f"set_initial_state before forward, then backward through step 0")
        return self._grad_initial

    def set_grad_hidden_state(self, t: int, grad: Any) -> AbstractRecurrent:
        """Add `grad` (tuple in `state_names` order) to the gradient flowing into the state after
        step t (0-based, negative from the end) in the next backward."""
        t = check.integer(self.describe(), "t", t)
        self._extra_state_grads[t] = check.state_arrays(self.describe(), "gradient", grad,
                                                        self.state_names, self.dtype)
        return self


class Cell(AbstractRecurrent):
    """Base class for recurrent cells written symbolically (no backward anywhere).

    Subclasses set `state_names`, register parameters with `self.parameter(...)` and define
    `step(self, x, *state)` returning the new state (a Var, or a tuple in `state_names` order).
    The output is the first state unless `output(*state)` is overridden.

    Shapes: x (D,) or (B, D); every state (H,) or (B, H) with H = hidden_size.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("step")
        if callable(fn) and not isinstance(fn, property):
            cls._cell_step = fn  # the most derived step: what unrolling calls
            cls.step = _CellStep(fn)  # the counter, calling this class's own fn (super() too)

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = check.size(self, "input_size", input_size)
        self.hidden_size = check.size(self, "output_size", hidden_size)

    def _check_state_sizes(self, state: tuple[np.ndarray, ...]) -> None:
        if type(self).state_shapes is not Cell.state_shapes:
            return  # a cell with its own state shapes: checked at forward
        H = self.hidden_size
        for name, s in zip(self.state_names, state):
            if s.ndim not in (1, 2) or s.shape[-1] != H:
                raise ShapeError(f"{self.describe()}: state {name!r} must have shape ({H},) or "
                                 f"(batch, {H}), got {s.shape}")

    def output(self, *state: Var) -> Var:
        return state[0]

    def state_shapes(self, x: Var) -> list[tuple[int, ...]]:
        self.expect(isinstance(x, Var), "expects an array input, got a list")
        self.expect(x.ndim in (1, 2) and x.shape[-1] == self.input_size,
                    f"expected input of shape ({self.input_size},) or (batch, {self.input_size}), "
                    f"got {x.shape}")
        lead = x.shape[:-1]
        return [lead + (self.hidden_size,) for _ in self.state_names]

    def step_forward(self, x: Var, state: tuple[Var, ...]) -> tuple[Var, tuple[Var, ...]]:
        new = self._cell_step(x, *state)
        new = new if isinstance(new, tuple) else (new,)
        self.expect(len(new) == len(self.state_names),
                    f"step returned {len(new)} states, state_names has {len(self.state_names)}")
        for name, old, s in zip(self.state_names, state, new):
            self.expect(s.shape == old.shape, f"state {name!r} changed shape {old.shape} -> {s.shape}")
        # `output` is also the Torch7 result field on instances: call the class's method
        return type(self).output(self, *new), new

    def extra_repr(self) -> str:
        return f"({self.input_size} -> {self.hidden_size})"
