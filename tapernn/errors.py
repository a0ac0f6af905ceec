"""The exception hierarchy: every error tapernn raises on bad input is a TapernnError.

Messages name the module path (or op scope), the timestep when there is one, and expected vs actual.
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any


class TapernnError(Exception):
    """Base class of every error tapernn raises deliberately."""


class ShapeError(TapernnError, ValueError):
    """Shapes (or the number of dimensions) do not fit together."""


class DTypeError(TapernnError, TypeError):
    """An array has a dtype the operation cannot take."""


class StateError(TapernnError, RuntimeError):
    """Calls in the wrong order: backward before forward, step-wise backward out of order, ..."""


class ValueRangeError(TapernnError, IndexError):
    """An id or class target outside its valid range."""


class NumericError(TapernnError, FloatingPointError):
    """NaN or Inf where a finite number is required (a loss, a gradient)."""


class ArgumentError(TapernnError, ValueError):
    """An argument's value is outside what the call accepts: a size, a probability, a mode."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument has the wrong type: a string or float where a size goes, an int for a flag."""


class TracingError(TapernnError, TypeError):
    """Python or NumPy was asked for a symbolic value's data while tracing (`if var:`,
    `np.tanh(var)`): use the tn.* ops instead."""


class VarAttributeError(TracingError, AttributeError):
    """An ndarray attribute a symbolic Var does not have (`.any()`): the message says which tn.*
    op to use; an AttributeError too, so hasattr(var, name) stays False."""


class NotPicklableError(TapernnError, TypeError, pickle.PicklingError):
    """`pickle.dumps(module)`: a module holds compiled programs and a lock; its parameters are
    saved with `tn.save` (.npz, never pickle). Also a TypeError and a PicklingError, as what
    pickle raises for other objects it cannot pickle."""

    @classmethod
    def of(cls, what: str) -> NotPicklableError:
        return cls(
            f"{what} cannot be pickled (it holds compiled programs and a lock): save its "
            f"parameters with tn.save(model, path) and read them back into a model built the "
            f"same way with tn.load_into(model, path) (or model.state_dict() / "
            f"load_state_dict(d)); a training run: tapernn.apps.checkpoint.save_checkpoint; a "
            f"copy in this process: copy.deepcopy(model)"
        )


class BuildError(TapernnError, NotImplementedError):
    """A custom module or criterion does not define `build`, or builds the wrong kind of value
    (a criterion's loss that is not a scalar). Also a NotImplementedError."""


def missing_build(who: str, args: str) -> BuildError:
    return BuildError(
        f"{who} does not define build(self, {args}): a custom module or criterion returns its "
        f"result from its arguments symbolically (tn.* ops)"
    )


def no_cell_step(cell: object, *args: object) -> None:
    """nn.Cell's `_cell_step` until a subclass defines `step` (was AttributeError)."""
    raise BuildError(
        f"{cell.describe()} does not define step(self, x, *state): a Cell returns its new "
        f"state(s) from the input and the old state(s) symbolically (tn.* ops)"
    )


def _cannot_take(fn: Any, n: int) -> bool:
    """Whether callable `fn`'s parameters cannot take `n` positional arguments."""
    try:
        inspect.signature(fn).bind(*[None] * n)
    except TypeError:
        return True
    return False


def wrong_step_arguments(cell: Any, n_states: int) -> BuildError | None:
    """A Cell's step that raised TypeError: a BuildError saying what to write when its parameters
    cannot take the input and one argument per state; None (the step's own error) when they can."""
    if not _cannot_take(cell._cell_step, 1 + n_states):
        return None
    names = ", ".join(("self", "x", *cell.state_names))
    return BuildError(
        f"{cell.describe()}: step{inspect.signature(cell._cell_step)} cannot take the input "
        f"and the {n_states} state(s) of state_names {tuple(cell.state_names)}: define "
        f"step({names}), one argument per state, in state_names order"
    )


def wrong_build_arguments(module: Any, n_args: int) -> BuildError | None:
    """A module's build that raised TypeError: a BuildError saying what to write when its
    parameters cannot take the call's arguments (a module's input; a criterion's input and
    target); None (build's own error) when they can."""
    if not _cannot_take(module.build, n_args):
        return None
    names = [*type(module).arg_names, *(f"x{k}" for k in range(2, n_args))][:n_args]
    return BuildError(
        f"{module.describe()}: build{inspect.signature(module.build)} cannot take the "
        f"{n_args} argument(s) it is called with ({', '.join(names)}): define "
        f"build(self, {', '.join(names)})"
    )


def build_failed(module: Any, e: Exception, n_args: int) -> Exception:
    """What a module's build that raised `e` raises: wrong_build_arguments' BuildError for a
    TypeError of the call itself; an op's ShapeError / DTypeError (which names the op, its
    shapes and scope, not the module: `nn.Tanh()` given integers read "tanh: takes
    floating-point operands") with the module that recorded the op in front, once (an error
    already naming a module, "nn.X...", passes through the containers around it); else `e`."""
    if not isinstance(e, TapernnError):
        return wrong_build_arguments(module, n_args) or e
    if not isinstance(e, (ShapeError, DTypeError)) or str(e).startswith("nn."):
        return e  # (Module.expect's and this function's: "nn.Linear(3 -> 2) ...: ...")
    named = type(e)(f"{module.describe()}: {e}")
    named.__suppress_context__ = True
    return named


def no_program(who: str) -> StateError:
    return StateError(
        f"{who}: no compiled program yet; call forward on it first (a module run inside "
        f"another compiles none of its own: ask the outermost one)"
    )


class GraphError(TapernnError):
    """A graph is malformed (Graph.verify) or a pass produced a malformed graph."""


class GradcheckError(TapernnError, AssertionError):
    """Analytic and finite-difference gradients disagree."""


def where(scope: str | None = None, step: int | None = None) -> str:
    """A short location suffix for messages: ' (in scope 'a.b', step 3)'."""
    parts = []
    if scope:
        parts.append(f"in {scope!r}")
    if step is not None:
        parts.append(f"step {step}")
    return f" ({', '.join(parts)})" if parts else ""


class RenderError(TapernnError, RuntimeError):
    """A diagram could not be rendered (usually: the Graphviz `dot` program is not installed)."""
