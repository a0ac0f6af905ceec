"""Named example models for the command line (`tapernn graph`, `tapernn inspect`): each factory
returns (model, example input, example grad_output) for T steps."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import nn
from .. import random as tn_random
from ..errors import TapernnError
from .command_line import import_attribute

Built = tuple[nn.Module, Any, Any]


def _sequence(cell: Callable[[int, int], nn.Module], steps: int, batch: int, size: int) -> Built:
    model = nn.Sequencer(cell(size, size))
    x = tn_random.generator().standard_normal((steps, batch, size))
    return model, x, np.ones((steps, batch, size))


def _tensor_module(
    make: Callable[[int, int], nn.Module], steps: int, batch: int, size: int
) -> Built:
    """SeqLSTM / SeqGRU: (T, B, D) tensors in and out, no Sequencer around them."""
    x = tn_random.generator().standard_normal((steps, batch, size))
    return make(size, size), x, np.ones((steps, batch, size))


def _stacked(steps: int, batch: int, size: int) -> Built:
    model = nn.Sequencer(nn.Sequential(nn.LSTM(size, size), nn.Dropout(0.5), nn.LSTM(size, size)))
    x = tn_random.generator().standard_normal((steps, batch, size))
    return model, x, np.ones((steps, batch, size))


def _acceptor(steps: int, batch: int, size: int) -> Built:
    """The tutorial's song acceptor: LookupTable -> SplitTable -> Sequencer(LSTM) ->
    SelectTable(-1) -> Linear -> Sigmoid."""
    vocab = 16
    model = nn.Sequential(
        nn.LookupTable(vocab, size),
        nn.SplitTable(0),
        nn.Sequencer(nn.LSTM(size, size)),
        nn.SelectTable(-1),
        nn.Linear(size, 1),
        nn.Sigmoid(),
    )
    ids = tn_random.generator().integers(0, vocab, size=(steps, batch) if batch > 1 else (steps,))
    return model, ids, np.ones((batch, 1) if batch > 1 else (1,))


def _transducer(steps: int, batch: int, size: int) -> Built:
    """The tutorial's transducer: LookupTable -> SplitTable -> Sequencer(LSTM) ->
    Sequencer(Linear) -> Sequencer(LogSoftMax)."""
    vocab, classes = 16, 4
    model = nn.Sequential(
        nn.LookupTable(vocab, size),
        nn.SplitTable(0),
        nn.Sequencer(nn.LSTM(size, size)),
        nn.Sequencer(nn.Linear(size, classes)),
        nn.Sequencer(nn.LogSoftMax()),
    )
    ids = tn_random.generator().integers(0, vocab, size=(steps, batch))
    return model, ids, [np.ones((batch, classes)) for _ in range(steps)]


MODELS: dict[str, Callable[[int, int, int], Built]] = {
    "lstm": lambda t, b, s: _sequence(nn.LSTM, t, b, s),
    "fastlstm": lambda t, b, s: _sequence(nn.FastLSTM, t, b, s),
    "gru": lambda t, b, s: _sequence(nn.GRU, t, b, s),
    "rnn": lambda t, b, s: _sequence(nn.RNN, t, b, s),
    "seqlstm": lambda t, b, s: _tensor_module(nn.SeqLSTM, t, b, s),
    "seqgru": lambda t, b, s: _tensor_module(nn.SeqGRU, t, b, s),
    "stacked": _stacked,
    "tutorial-acceptor": _acceptor,
    "tutorial-transducer": _transducer,
}


def _checked(name: str, built: Any) -> Built:
    """A factory's result must be (model, example input, example grad_output)."""
    if not (isinstance(built, tuple) and len(built) == 3 and isinstance(built[0], nn.Module)):
        shown = (
            f"a tuple of {len(built)}"
            if isinstance(built, tuple) and len(built) != 3
            else f"({type(built[0]).__name__}, ...)"
            if isinstance(built, tuple)
            else type(built).__name__
        )
        raise TapernnError(
            f"model factory {name!r} must return (model, input, grad_output), got "
            f"{shown} (model: an nn.Module)"
        )
    return built


def _check_callable(name: str, factory: Any, *args: int) -> None:
    """A factory is called as factory(steps, batch, size): say so, not a bare TypeError."""
    expected = "a function factory(steps, batch, size) -> (model, input, grad_output)"
    if not callable(factory):
        raise TapernnError(
            f"model factory {name!r} must be {expected}, got {type(factory).__name__}"
        )
    try:
        inspect.signature(factory).bind(*args)
    except ValueError:  # (no signature to read, e.g. some builtins: let the call decide)
        return
    except TypeError as e:
        raise TapernnError(f"model factory {name!r} must be {expected}: {e}") from None


def build_model(name: str, steps: int = 3, batch: int = 2, size: int = 4) -> Built:
    """A named model, or `path.to.module:factory` (factory(steps, batch, size) -> Built), or
    `path.to.module:Class` for an nn.Cell subclass (Sequencer(Class(size, size)), as `tapernn
    train --cell` takes one)."""
    if ":" in name:
        factory = import_attribute(name, "--model", TapernnError)
        attr = name.partition(":")[2]
        if isinstance(factory, type) and issubclass(factory, nn.Cell):
            factory, attr = functools.partial(_sequence, factory), f"Sequencer({attr}(size, size))"
        _check_callable(name, factory, steps, batch, size)
        try:
            built = factory(steps, batch, size)
        except TapernnError:
            raise
        except Exception as e:  # one line (the CLI rule): what raised, and where to see it
            call = attr if attr.startswith("Sequencer(") else f"{attr}({steps}, {batch}, {size})"
            raise TapernnError(
                f"model factory {name!r} raised {type(e).__name__}: {e} (call {call} in Python "
                f"for its traceback)"
            ) from e
        return _checked(name, built)
    if name not in MODELS:
        raise TapernnError(
            f"unknown model {name!r}; choose from {', '.join(MODELS)}, module:factory or "
            f"module:CellClass"
        )
    return MODELS[name](steps, batch, size)
