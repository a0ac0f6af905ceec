"""Recurrence: any module mapping [x_t, h_{t-1}] -> h_t (an array or a nested list of arrays)
as a recurrent module, with h_0 zeros sized from the batch.  Torch7: nn.Recurrence."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import validation as check
from ..errors import ArgumentError
from ..tracing import Var
from . import row_select as rows
from .module import Module
from .recurrent import AbstractRecurrent
from .settings import fixed, rules, size
from .tree import LEAF, flatten, unflatten


def _size_tree(size: Any) -> Any:
    """output_size: an int n -> one (n,) array; a tuple of ints -> one array of that shape
    (Torch7's {a, b} / LongStorage); a list -> a table (nested list) of those."""
    if check.is_integer(size) and size > 0:
        return (int(size),)
    if isinstance(size, tuple) and size and all(check.is_integer(s) and s > 0 for s in size):
        return tuple(int(s) for s in size)
    if isinstance(size, list) and size:
        return [_size_tree(s) for s in size]
    raise ArgumentError(
        f"nn.Recurrence: output_size must be a positive int, a shape "
        f"tuple or a list of them (a table state), got {size!r}"
    )


def _output_size(owner: Any, name: str, size: Any) -> Any:
    """`size` as given, if _size_tree takes it."""
    _size_tree(size)
    return size


def _shape_leaves(tree: Any) -> tuple[list[tuple[int, ...]], Any]:
    if isinstance(tree, tuple):
        return [tree], LEAF
    leaves, trees = [], []
    for t in tree:
        lv, tr = _shape_leaves(t)
        leaves += lv
        trees.append(tr)
    return leaves, tuple(trees)


class Recurrence(AbstractRecurrent):
    """Makes `module` ([x_t, h_{t-1}] -> h_t) recurrent: each forward is one step, h_0 = zeros.

    `output_size`: the shape of h without the batch dim — an int, a shape tuple (Torch7's
    {a, b}), or a list of those for a table state (e.g. [H, H] for LSTM-like [h, c]). `n_input_dim`: the number of
    dims of one x_t without the batch (the first array, depth first, when x_t is a list), so a
    (B, D) input with n_input_dim=1 is a batch of B. The output is h_t itself (array or list).
    Works step by step, in a Sequencer, with mask_zero (all-zero x_t rows give h_t = 0).
    Torch7: nn.Recurrence(recurrentModule, outputSize, nInputDim).
    """

    # (output_size: fixed, the states' shapes and names follow it)
    setting_rules = rules(output_size=fixed(_output_size), n_input_dim=size(minimum=0))

    def __init__(self, module: Module, output_size: Any, n_input_dim: int):
        check.module("nn.Recurrence", "module", module)
        self.n_input_dim, self.output_size = n_input_dim, output_size
        self.shapes, self.tree = _shape_leaves(_size_tree(output_size))
        self.state_names = (
            ("h",) if self.tree == LEAF else tuple(f"h{k}" for k in range(len(self.shapes)))
        )
        super().__init__()
        self.add_child("0", module)

    @property
    def module(self) -> Module:
        return self._children["0"]

    def _first(self, x: Any) -> Var:
        first = flatten(x)[0][0]
        self.expect(isinstance(first, Var), f"expects arrays in x_t, got {type(first).__name__}")
        return first

    def state_shapes(self, x: Any) -> list[tuple[int, ...]]:
        first = self._first(x)
        n = self.n_input_dim
        self.expect(
            first.ndim in (n, n + 1),
            f"n_input_dim is {n}, so x_t must have {n} dims or {n + 1} with a batch, "
            f"got shape {first.shape}",
        )
        lead = first.shape[:1] if first.ndim == n + 1 else ()
        return [lead + s for s in self.shapes]

    def _state_dtype(self, x: Any) -> np.dtype:
        return super()._state_dtype(self._first(x))

    def step_forward(self, x: Any, state: tuple) -> tuple[Any, tuple]:
        h_prev = state[0] if self.tree == LEAF else unflatten(self.tree, state)
        out = self.module([x, h_prev])
        leaves, tree = flatten(out)
        self.expect(
            tree == self.tree and all(isinstance(v, Var) for v in leaves),
            f"the module must return a state structured like output_size "
            f"{self.output_size!r}, got {_describe(out)}",
        )
        for name, old, new in zip(self.state_names, state, leaves):
            self.expect(
                new.shape == old.shape,
                f"the module returned state {name} of shape {new.shape}, expected "
                f"{old.shape} (from output_size {self.output_size!r})",
            )
        return out, tuple(leaves)

    def _apply_masks(self, ctx: Any, x: Any, out: Any, old: tuple, new: tuple) -> tuple:
        """Selects (nn/row_select.py), so a padded row is exactly 0 whatever it held."""
        first = self._first(x)
        batched = first.ndim == self.n_input_dim + 1
        if self._mask_zero:
            axes = tuple(range(1 if batched else 0, first.ndim))
            pad = rows.zero_rows(first, axes)
            new = tuple(rows.clear(s, pad) for s in new)
        if ctx.step_mask is not None:  # past a row's length (Sequencer lengths): state held
            # (products: the padded inputs were cleared, the padded outputs are cleared after
            # the loop by the Sequencer; nn/recurrent.py)
            new = tuple(rows.held(s, o, ctx.step_mask) for s, o in zip(new, old))
        if self._mask_zero or ctx.step_mask is not None:
            out = new[0] if self.tree == LEAF else unflatten(self.tree, new)
        return out, new

    def extra_repr(self) -> str:
        return f"({self.output_size!r}, {self.n_input_dim})"

    def describe(self) -> str:
        return rows.masked_name(f"nn.Recurrence @ {self.module.describe()}", self._mask_zero)

    def __repr__(self) -> str:  # (its module's tree, as a Sequencer's)
        return rows.masked_name(f"nn.Recurrence @ {self.module!r}", self._mask_zero)


def _map(fn: Any, out: Any) -> Any:
    leaves, tree = flatten(out)
    mapped = [fn(v) for v in leaves]
    return mapped[0] if tree == LEAF else unflatten(tree, mapped)


def _describe(out: Any) -> str:
    if isinstance(out, Var):
        return f"an array of shape {out.shape}"
    if isinstance(out, (list, tuple)):
        return "[" + ", ".join(_describe(o) for o in out) + "]"
    return type(out).__name__
