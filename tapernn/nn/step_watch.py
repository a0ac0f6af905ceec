"""Step numbers that notice being read: while a rolled Sequencer traces one step as a template,
the step tag (tracing.current_step()), a module's step counter (BuildContext.next_step) and a
Cell's `self.step` are `StepNumber`s; comparing, formatting or computing with one marks the
step as step-dependent, and such a step runs unrolled (a template would be wrong)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_READS: ContextVar[list | None] = ContextVar("tapernn_step_reads", default=None)


def _note() -> None:
    reads = _READS.get()
    if reads is not None:
        reads.append(True)


class StepNumber(int):
    """An int whose value, once used (compared, hashed, formatted, computed with), marks the
    step being traced as depending on its step number. Storing or passing it is not a use."""

    __slots__ = ()


def _watch(name: str) -> None:
    base = getattr(int, name)

    def method(self: Any, *args: Any) -> Any:
        _note()
        return base(self, *args)

    method.__name__ = name
    setattr(StepNumber, name, method)


for _name in (
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__hash__",
    "__add__",
    "__radd__",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "__floordiv__",
    "__rfloordiv__",
    "__mod__",
    "__rmod__",
    "__divmod__",
    "__rdivmod__",
    "__truediv__",
    "__rtruediv__",
    "__pow__",
    "__rpow__",
    "__neg__",
    "__pos__",
    "__abs__",
    "__invert__",
    "__and__",
    "__rand__",
    "__or__",
    "__ror__",
    "__xor__",
    "__rxor__",
    "__lshift__",
    "__rlshift__",
    "__rshift__",
    "__rrshift__",
    "__index__",
    "__int__",
    "__float__",
    "__bool__",
    "__format__",
    "__str__",
    "__repr__",
    "__round__",
    "__trunc__",
    "__floor__",
    "__ceil__",
):
    _watch(_name)


def plain(t: Any) -> Any:
    """`t` as a plain int (None stays None), without counting as a read."""
    return None if t is None else int.__int__(t)


@contextlib.contextmanager
def watching() -> Iterator[list]:
    """Collect reads of StepNumbers inside the block: the list is non-empty if any happened."""
    reads: list = []
    token = _READS.set(reads)
    try:
        yield reads
    finally:
        _READS.reset(token)


@contextlib.contextmanager
def unwatched() -> Iterator[None]:
    """Reads inside the block are the library's own (not the step function's)."""
    token = _READS.set(None)
    try:
        yield
    finally:
        _READS.reset(token)
