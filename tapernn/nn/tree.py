"""Nested lists of arrays (Torch7 tables) flattened to leaves and rebuilt: the structure of a
module's input and output."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

LEAF = "*"


def flatten(obj: Any) -> tuple[list[Any], Any]:
    if isinstance(obj, (list, tuple)):
        leaves, trees = [], []
        for o in obj:
            lv, tr = flatten(o)
            leaves.extend(lv)
            trees.append(tr)
        return leaves, tuple(trees)
    return [obj], LEAF


def unflatten(tree: Any, leaves: list[Any] | Iterator[Any]) -> Any:
    it = iter(leaves)
    return _build(tree, it)


def _build(tree: Any, it: Iterator[Any]) -> Any:
    if tree == LEAF:
        return next(it)
    return [_build(t, it) for t in tree]


def map_leaves(fn: Callable[[Any], Any], obj: Any) -> Any:
    leaves, tree = flatten(obj)
    return unflatten(tree, [fn(x) for x in leaves])


def count_leaves(tree: Any) -> int:
    return 1 if tree == LEAF else sum(count_leaves(t) for t in tree)
