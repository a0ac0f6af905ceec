"""Containers: Sequential (a chain), ConcatTable (every child on the same input -> list) and
ParallelTable (child k on input[k] -> list)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import validation as check
from ..errors import ShapeError, ValueRangeError
from .module import Module


class Container(Module):
    """Children indexed 0..n-1; `add(m)` chains, `get(i)` / `[i]` are 0-based (Torch7's get(i+1))."""

    def __init__(self, *modules: Module):
        super().__init__()
        for m in modules:
            self.add(m)

    def add(self, module: Module) -> Container:
        self.add_child(str(len(self._children)), check.module(self, "module", module))
        return self

    def get(self, index: int) -> Module:
        mods = self.children()
        if not -len(mods) <= check.integer(self, "index", index) < len(mods):
            raise ValueRangeError(
                f"{self.describe()} has {len(mods)} modules; index {index} is out of range"
            )
        return mods[index]

    __getitem__ = get

    def __len__(self) -> int:
        return len(self._children)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.children())

    @property
    def is_recurrent(self) -> bool:  # steps when forwarded, unless a Sequencer wraps it
        return any(m.is_recurrent for m in self.children())

    def describe(self) -> str:
        return f"nn.{type(self).__name__}"


class Sequential(Container):
    """Applies its children in order.  Torch7: nn.Sequential."""

    def build(self, x: Any) -> Any:
        for m in self.children():
            x = m(x)
        return x


class ConcatTable(Container):
    """Applies every child to the same input; returns the list of their outputs."""

    def build(self, x: Any) -> list:
        return [m(x) for m in self.children()]


class ParallelTable(Container):
    """Applies child k to input[k]; returns the list of their outputs."""

    def build(self, xs: Any) -> list:
        self.expect(
            isinstance(xs, list) and len(xs) == len(self),
            f"expected a list of {len(self)} inputs, got "
            f"{len(xs) if isinstance(xs, list) else type(xs).__name__}",
            ShapeError,
        )
        return [m(x) for m, x in zip(self.children(), xs)]
