"""Recurrent modules (Torch7's AbstractRecurrent) and `Cell`, the base for symbolic cells.

A recurrent module threads its state through the build context: each symbolic call is one
step. Stepped directly (`forward(x_t)` per step) it keeps a history for BPTT; inside a Sequencer
the whole sequence is one unrolled graph."""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import numpy as np

from .. import validation as check
from ..errors import DTypeError, ShapeError, StateError, no_cell_step, wrong_step_arguments
from ..tracing import Var
from . import row_select as rows
from .context import current_build
from .module import Module
from .settings import fixed, rules, size
from .tree import LEAF, count_leaves, flatten, map_leaves, unflatten
from .write_plan import LastOutput, Pending

_BY_STEP = itemgetter(1)  # a field item's step: (name, t, value)


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


class _StepField:
    """`outputs`, `inputs`, `states` of a recurrent module: plain fields, except that a Sequencer
    call leaves them pending (write_plan.Pending) and the first read makes them (lists of
    step rows, a dict of them)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, m: Any, owner: type | None = None) -> Any:
        if m is None:
            return self
        fields = m.__dict__
        value = fields[self.name]
        if type(value) is Pending:
            value = fields[self.name] = value.field(self.name)
        return value

    def __set__(self, m: Any, value: Any) -> None:
        m.__dict__[self.name] = value


class AbstractRecurrent(Module):
    """State-carrying module: `outputs[t]`, `inputs[t]`, `states[name][t]`, `step`, `forget()`."""

    is_recurrent = True
    _drawn_whole = True  # (a cell's Linear children and gates: one box per step in diagrams)
    output = LastOutput()  # Torch7's field: the newest step's output, also inside a Sequencer
    outputs = _StepField()
    inputs = _StepField()
    states = _StepField()
    state_names: tuple[str, ...] = ("h",)
    table_states = False  # a state may be a list of arrays (nn.Recurrent built from tables)
    setting_rules = rules(rho=size(allow_none=True))

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list = []
        self.inputs: list = []
        self.states: dict[str, list] = {name: [] for name in self.state_names}
        self._n_steps = 0
        self._state: tuple[np.ndarray, ...] | None = None  # remembered: where to go on
        self._user_initial: tuple[np.ndarray, ...] | None = None  # set_initial_state
        self._grad_initial: tuple[np.ndarray, ...] | None = None  # d loss / d initial state
        self._extra_state_grads: dict[int, tuple[np.ndarray, ...]] = {}  # set_grad_hidden_state
        # per absolute step t: the gradient into the state after t from step t + 1 (leaves)
        self._grad_hidden: Any = {}
        self._leaf_tree: tuple | None = None  # per state name: LEAF, or a table's structure
        self._mask_zero = False
        self.rho: int | None = None

    @property
    def step(self) -> StepCount:
        return StepCount(self._n_steps, getattr(self, "_cell_step", None))

    @property
    def cells(self) -> list:
        if "c" not in self.states:
            raise AttributeError(
                f"{self.describe()} has no cell state (states: {self.state_names})"
            )
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
        for name, value in zip(self.state_names, self._by_name(new_state)):
            ctx.probe(self, "state:" + name, t, value)
        return out

    def _apply_masks(self, ctx: Any, x: Var, out: Var, old: tuple, new: tuple) -> tuple:
        """Selects (nn/row_select.py), so a padded row is exactly 0 whatever it held."""
        if self._mask_zero:  # an all-zero input row: zero output, state reset for that row
            pad = rows.zero_rows(x, (-1,), keepdims=True)
            out = map_leaves(lambda v: rows.clear(v, pad), out)
            new = tuple(rows.clear(s, pad) for s in new)
        if ctx.step_mask is not None:  # past a row's length: state held (products: the
            # Sequencer cleared the padded inputs, so every value here is finite, and it clears
            # the padded outputs with a select after the loop: no select, no bool in the body)
            new = tuple(rows.held(s, o, ctx.step_mask) for s, o in zip(new, old))
        return out, new

    def _state_dtype(self, x: Any) -> np.dtype:
        return x.dtype if isinstance(x, Var) and x.dtype.kind == "f" else self.dtype

    # ---- runtime state ---------------------------------------------------------------------------

    def _before_forward(self) -> None:
        """A Sequencer backward's pending get_grad_hidden_state (it holds copies of that call's
        arguments) is dropped now: the coming call's write-back would drop it anyway, and the
        copies need not sit through the forward (the peak of a training loop)."""
        fields = self.__dict__  # (a plain field: no registration check; every call runs this)
        if callable(fields["_grad_hidden"]):
            fields["_grad_hidden"] = {}

    def _initial_state_arrays(self) -> tuple[np.ndarray, ...] | None:
        return self._state if self._state is not None else self._user_initial

    _initial_state_arrays.plain = True  # (nn.steady checks these fields inline)

    def _store_state(self, state: tuple[np.ndarray, ...]) -> None:
        self._state = state

    _store_state.plain = True  # (nn.steady_source writes the field itself)

    def _write_fields(self, items: list, mode: str) -> None:
        """Record per-step values. mode "sequence": a Sequencer call (fields hold its T steps);
        "append": step-wise training (history for BPTT); "latest": step-wise evaluation (only the
        newest step is kept, so sampling thousands of steps uses constant memory)."""
        outputs, inputs = [], []
        states: dict[str, list] = {name: [] for name in self.state_names}
        for name, _, value in sorted(items, key=_BY_STEP):
            if name == "outputs":
                outputs.append(value)
            elif name == "inputs":
                inputs.append(value)
            else:
                states[name[6:]].append(value)  # "state:<name>"
        self._write_steps(outputs, inputs, states, mode)

    # the runtime may call _write_steps itself with the fields grouped and ordered by step (once
    # per program, not per call) where a class keeps this _write_fields
    _write_fields.by_steps = True

    def _write_steps(self, outputs: list, inputs: list, states: dict, mode: str) -> None:
        """_write_fields' values grouped: new lists (ordered by step) of outputs, inputs and,
        per state name (every one of `state_names`), states."""
        # (plain fields: written into __dict__, as object.__setattr__ would, without the
        # registration check of Module.__setattr__ -- this runs on every call)
        fields = self.__dict__
        n_new = len(outputs)
        if mode == "sequence":
            fields["_grad_hidden"] = {}  # steps of the previous call: gone with its fields
        if mode != "append":
            fields["outputs"], fields["inputs"], fields["states"] = outputs, inputs, states
        else:
            missing = self._n_steps - len(self.outputs)  # steps run in evaluation mode before
            if missing > 0:  # (only the newest kept): pad, so outputs[t] is still step t
                for values in [self.outputs, self.inputs, *self.states.values()]:
                    values[:0] = [None] * missing
            self.outputs.extend(outputs)
            self.inputs.extend(inputs)
            for name, values in states.items():
                self.states[name].extend(values)
        fields["_n_steps"] = n_new if mode == "sequence" else self._n_steps + n_new
        if mode == "append" and self.rho is not None and len(self.outputs) > self.rho:
            # older steps are dropped (None) but keep their places: outputs[t] is still step t
            for values in [self.outputs, self.inputs, *self.states.values()]:
                for k in range(len(values) - self.rho - n_new, len(values) - self.rho):
                    if k >= 0:
                        values[k] = None

    def _write_pending(self, pending: Pending, n_steps: int) -> None:
        """_write_steps of a Sequencer call ("sequence" mode), its lists made when first read."""
        fields = self.__dict__
        fields["_grad_hidden"] = {}  # steps of the previous call: gone with its fields
        fields["outputs"] = fields["inputs"] = fields["states"] = pending
        fields["_n_steps"] = n_steps

    _write_pending.plain = True  # (nn.steady_source writes these fields itself)

    def _clear_memory(self, keep_initial: bool) -> None:
        fields = self.__dict__  # (plain fields, as in _write_fields)
        fields["_state"] = None
        fields["outputs"], fields["inputs"] = [], []
        fields["states"] = {name: [] for name in self.state_names}
        fields["_n_steps"] = 0
        fields["_grad_hidden"] = {}
        if not keep_initial:
            self._user_initial = None
            self._grad_initial = None
            self._extra_state_grads = {}
        super()._clear_memory(keep_initial)

    def mask_zero(self) -> AbstractRecurrent:
        """Rows whose step input is all zeros output zeros and reset that row's state (so pad
        variable-length batches on the left); its description says so.  Torch7: :maskZero()."""
        self._mask_zero = True
        return self

    def describe(self) -> str:
        return rows.masked_name(super().describe(), self._mask_zero)

    def max_bptt_step(self, rho: int | None) -> AbstractRecurrent:
        """In step-wise use keep at most `rho` steps of history for BPTT (None: unbounded).
        Older steps' `outputs[t]`, `inputs[t]` and states become None (indices stay absolute)."""
        self.rho = rho
        super().max_bptt_step(rho)  # and the recurrent modules inside (a Recursor's)
        return self

    # ---- hidden-state API ------------------------------------------------------------------------
    # A state is a tuple in `state_names` order; each entry is an array or (nn.Recurrent with a
    # table state) a list of arrays. Internally the runtime threads the flat leaves.

    def _state_tree(self) -> tuple:
        return self._leaf_tree if self._leaf_tree is not None else (LEAF,) * len(self.state_names)

    def _state_leaves(self, state: Any, what: str) -> list:
        """The leaves of a user-given state tuple, checked against `state_names`."""
        state = (state,) if isinstance(state, np.ndarray) else state
        if not isinstance(state, (tuple, list)):
            raise check.ArgumentTypeError(
                f"{self.describe()}: expected a tuple of {len(self.state_names)} {what} "
                f"{self.state_names}, got {check.got(state)}"
            )
        if len(state) != len(self.state_names):
            raise ShapeError(
                f"{self.describe()}: expected {len(self.state_names)} {what} "
                f"{self.state_names}, got {len(state)}"
            )
        leaves, tree = flatten(list(state))
        if self._leaf_tree is None and self.table_states and tree != self._state_tree():
            self._leaf_tree = tree  # a table state given before the first forward
        if tree != self._state_tree():
            want = (
                "one array per state name"
                if self._leaf_tree is None
                else f"per state name an array or a list of arrays, as {self._state_tree()}"
            )
            raise ShapeError(
                f"{self.describe()}: {what} {self.state_names}: expected {want}, "
                f"got the nesting {tree}"
            )
        return [check.narrowed(self.describe(), what, a, self.dtype) for a in leaves]

    def _by_name(self, leaves: Any) -> tuple:
        return tuple(unflatten(self._state_tree(), list(leaves)))

    def _leaf_name(self, k: int, short: bool = False) -> str:
        """State leaf k's name: "h", or for a table state "h (leaf 1)" (short: "h.1")."""
        names = [
            n
            for n, sub in zip(self.state_names, self._state_tree())
            for _ in range(count_leaves(sub))
        ]
        if len(names) == len(self.state_names):
            return names[k]
        return f"{names[k]}.{k}" if short else f"{names[k]} (leaf {k})"

    def get_hidden_state(self, t: int = -1) -> tuple:
        """The state after step t (0-based; negative from the end), a tuple in `state_names` order.
        Torch7: getHiddenState."""
        n, kept = max(self._n_steps, len(self.outputs)), len(self.outputs)
        if not -n <= check.integer(self.describe(), "t", t) < n:
            raise StateError(f"{self.describe()}: no step {t}; {n} steps are recorded")
        k = t % n - (n - kept)  # (evaluation mode keeps the newest step only: outputs[0])
        if k < 0 or self.outputs[k] is None:
            why = (
                f"evaluation mode keeps only the newest step ({n - 1})"
                if k < 0
                else f"max_bptt_step keeps the last {self.rho} steps"
            )
            raise StateError(f"{self.describe()}: step {t} was dropped; {why}")
        return tuple(self.states[name][k] for name in self.state_names)

    def set_initial_state(self, state: Any) -> AbstractRecurrent:
        """Start the next sequence from `state` (tuple in `state_names` order) instead of zeros,
        until forget().  Torch7: userPrevOutput / userPrevCell, setHiddenState(0)."""
        self._user_initial = tuple(self._state_leaves(state, "state arrays"))
        if len(self._user_initial) == len(self.state_names):
            self._check_state_sizes(self._user_initial)
        self._state = None
        self._grad_initial = None
        return self

    def _check_state_sizes(self, state: tuple[np.ndarray, ...]) -> None:
        """Hook: Cells know their states' sizes before any forward."""

    def get_grad_initial_state(self) -> tuple:
        """d loss / d(initial state set by set_initial_state), once backward has reached step 0.
        Torch7: userGradPrevOutput / userGradPrevCell, getGradHiddenState(0)."""
        if self._grad_initial is None:
            raise StateError(
                f"{self.describe()}: no gradient for the initial state yet; call "
                f"set_initial_state before forward, then backward through step 0"
            )
        return self._by_name(self._grad_initial)

    def set_grad_hidden_state(self, t: int, grad: Any) -> AbstractRecurrent:
        """Set the gradient flowing into the state after step t (0-based, negative from the end)
        from step t + 1, for the next backward through step t: `grad` (tuple in `state_names`
        order) REPLACES what step t + 1 would give (at the last step nothing comes from later
        steps, so it is the seed). To add instead, set `get_grad_hidden_state(t)` plus yours
        (stepping by hand: after step t + 1's backward; in a Sequencer: after one backward, then
        backward again).  Torch7: setGradHiddenState."""
        t = check.integer(self.describe(), "t", t)
        self._extra_state_grads[t] = tuple(self._state_leaves(grad, "gradient arrays"))
        return self

    def get_grad_hidden_state(self, t: int = -1) -> tuple:
        """The gradient that flowed into the state after step t from step t + 1 in the last
        backward (zeros at the newest step of a chunk, or what set_grad_hidden_state put there),
        a tuple in `state_names` order; stepping by hand, available as soon as step t + 1 is
        backwarded.  Torch7: getGradHiddenState."""
        if callable(self._grad_hidden):  # a Sequencer backward computes them on first request
            self._grad_hidden()
        grads = self._grad_hidden
        step = t + len(self.outputs) if t < 0 else t  # outputs[t] is step t, as in get_hidden_state
        if step not in grads:
            why = "no backward since the last forward, forget() or training() / evaluate() switch"
            went = f"the last backward went through steps {sorted(grads)}" if grads else why
            raise StateError(f"{self.describe()}: no gradient for the state of step {t}; {went}")
        return self._by_name(grads[step])


def recurrent_inside(owner: Module) -> AbstractRecurrent:
    """The recurrent module whose hidden-state API a Recursor or Sequencer exposes: its module if
    recurrent, else the one outermost recurrent module inside it."""
    child = owner._children["0"]
    if isinstance(child, AbstractRecurrent):
        return child
    found = [m for m in child.modules() if isinstance(m, AbstractRecurrent)]
    outer = [
        m for m in found if not any(o is not m and any(i is m for i in o.modules()) for o in found)
    ]
    if len(outer) != 1:
        which = ", ".join(m.describe() for m in outer) or "none"
        raise StateError(
            f"{owner.describe()}: the hidden-state API needs exactly one recurrent "
            f"module inside, found {len(outer)} ({which}); call it on that module"
        )
    return outer[0]


class HiddenStateOf:
    """The hidden-state API of the recurrent module inside (see `recurrent_inside`), as Torch7's
    Recursor and Sequencer forward getHiddenState & co. to their module."""

    def get_hidden_state(self, t: int = -1) -> tuple:
        return recurrent_inside(self).get_hidden_state(t)

    def set_initial_state(self, state: Any) -> Any:
        recurrent_inside(self).set_initial_state(state)
        return self

    def get_grad_initial_state(self) -> tuple:
        return recurrent_inside(self).get_grad_initial_state()

    def set_grad_hidden_state(self, t: int, grad: Any) -> Any:
        recurrent_inside(self).set_grad_hidden_state(t, grad)
        return self

    def get_grad_hidden_state(self, t: int = -1) -> tuple:
        return recurrent_inside(self).get_grad_hidden_state(t)


class Cell(AbstractRecurrent):
    """Base class for recurrent cells written symbolically (no backward anywhere).

    Subclasses set `state_names`, register parameters with `self.parameter(...)` and define
    `step(self, x, *state)` returning the new state (a Var, or a tuple in `state_names` order).
    The output is the first state unless `output(*state)` is overridden. Shapes: x (D,) or
    (B, D); every state (H,) or (B, H) with H = hidden_size."""

    _cell_step = no_cell_step  # (a BuildError; each subclass's own step replaces it)
    setting_rules = rules(input_size=fixed(size()), hidden_size=fixed(size()))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("step")
        if callable(fn) and not isinstance(fn, property):
            cls._cell_step = fn  # the most derived step: what unrolling calls
            cls.step = _CellStep(fn)  # the counter, calling this class's own fn (super() too)
        fn = cls.__dict__.get("output")
        if callable(fn) and not isinstance(fn, LastOutput):
            cls.output = LastOutput(fn)  # the method on the class, the result field on instances

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size  # (hidden_size's message: the constructors' argument name)
        self.hidden_size = check.size(self, "output_size", hidden_size)

    def _check_state_sizes(self, state: tuple[np.ndarray, ...]) -> None:
        if type(self).state_shapes is not Cell.state_shapes:
            return  # a cell with its own state shapes: checked at forward
        H = self.hidden_size
        for name, s in zip(self.state_names, state):
            if s.ndim not in (1, 2) or s.shape[-1] != H:
                raise ShapeError(
                    f"{self.describe()}: state {name!r} must have shape ({H},) or "
                    f"(batch, {H}), got {s.shape}"
                )

    @LastOutput
    def output(self, *state: Var) -> Var:
        return state[0]

    def state_shapes(self, x: Var) -> list[tuple[int, ...]]:
        self.expect(isinstance(x, Var), "expects an array input, got a list")
        self.expect(
            x.ndim in (1, 2) and x.shape[-1] == self.input_size,
            f"expected input of shape ({self.input_size},) or (batch, {self.input_size}), "
            f"got {x.shape}",
        )
        lead = x.shape[:-1]
        return [lead + (self.hidden_size,) for _ in self.state_names]

    def step_forward(self, x: Var, state: tuple[Var, ...]) -> tuple[Var, tuple[Var, ...]]:
        try:
            new = self._cell_step(x, *state)
        except TypeError as e:  # Python's own, naming neither the cell nor state_names
            raise wrong_step_arguments(self, len(state)) or e
        new = tuple(new) if isinstance(new, (tuple, list)) else (new,)
        returns = (
            f"step returns the new state, one tn.Var per state_names {self.state_names} (the "
            f"output is the first: override output(*state) for another)"
        )
        n, bad = len(self.state_names), [type(s).__name__ for s in new if not isinstance(s, Var)]
        self.expect(len(new) == n, f"step returned {len(new)} values for {n} states; {returns}")
        self.expect(not bad, f"step returned {', '.join(bad)} where a state goes; {returns}")
        for name, old, s in zip(self.state_names, state, new):
            self.expect(
                s.shape == old.shape, f"state {name!r} changed shape {old.shape} -> {s.shape}"
            )
            if s.dtype != old.dtype:  # (a bool state from `h > 0`; NumPy's int promotion)
                why = check.dtype_change(flatten(x)[0], old.dtype, s.dtype)
                self.expect(False, f"state {name!r} changed dtype {why}", DTypeError)
        # `output` is also the Torch7 result field on instances: call the class's method
        out = type(self).output(self, *new)
        bad = [type(v).__name__ for v in flatten(out)[0] if not isinstance(v, Var)]
        self.expect(
            not bad, f"output() returned {', '.join(bad)} where a tn.Var (or a table of them) goes"
        )
        return out, new

    def extra_repr(self) -> str:
        return f"({self.input_size} -> {self.hidden_size})"
