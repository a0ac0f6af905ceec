"""TrimZero: MaskZero's results, computed on the non-zero rows only (the module runs on a
smaller batch and the zero rows are put back).  Torch7: nn.TrimZero(module, nInputDim)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import validation as check
from ..errors import ShapeError
from ..tracing import Var
from . import row_select as rows
from .masking import MaskZero, zero_row_flags
from .module import Module
from .settings import rules, size
from .tree import LEAF, flatten, unflatten


class TrimZero(MaskZero):
    """Zeroes the output rows (and gradients) of `module` whose first input array's row is all
    zeros, as MaskZero, but runs `module` on the other rows only.

    `n_input_dim`: dims of one sample (a (B, D) input with n_input_dim=1 is a batch). Called
    directly on a batch around a non-recurrent module, the zero rows are removed before the
    module runs (each new number of kept rows compiles the module once). Inside a traced model
    (a Sequencer, a container) or around a recurrent module, shapes are fixed when the graph is
    traced and rows carry state, so it computes exactly as MaskZero (same results, no saving).
    """

    setting_rules = rules(n_input_dim=size(minimum=0))

    def __init__(self, module: Module, n_input_dim: int):
        super().__init__(module, n_input_dim)  # (checked by this class's rule: 0 allowed)
        self._rows: np.ndarray | None = None  # kept rows of the last trimmed forward
        self._trimmed: Any = None

    @property
    def module(self) -> Module:
        return self._children["0"]

    def _batched(self, first: Any) -> bool:
        n, ndim = self.n_input_dim, first.ndim
        if ndim not in (n, n + 1):
            raise ShapeError(
                f"{self.describe()}: n_input_dim is {n}, so the input must have {n} "
                f"dims or {n + 1} with a batch, got shape {first.shape}"
            )
        return ndim == n + 1

    def build(self, x: Any) -> Any:
        first = flatten(x)[0][0]
        self.expect(isinstance(first, Var), f"expects arrays, got {type(first).__name__}")
        batched = self._batched(first)
        pad = rows.zero_rows(first, tuple(range(1 if batched else 0, first.ndim)))
        leaves, tree = flatten(self.module(x))
        masked = [rows.clear(v, pad) for v in leaves]
        return masked[0] if tree == LEAF else unflatten(tree, masked)

    def forward(self, input: Any) -> Any:
        leaves, tree = flatten(input)
        first = np.asarray(leaves[0])
        self._rows = None
        if not np.issubdtype(first.dtype, np.number):
            raise ShapeError(f"{self.describe()}: expects arrays, got {check.got(leaves[0])}")
        if self.module.is_recurrent or not self._batched(first):
            return super().forward(input)
        keep = ~zero_row_flags(first)  # (a NaN row is kept: Torch7's norm ~= 0)
        rows = np.flatnonzero(keep)
        used = rows if rows.size else np.array([0])  # (all padding: run one row, zero it)
        self._trimmed = unflatten(tree, [np.asarray(v)[used] for v in leaves])
        out_leaves, out_tree = flatten(self.module.forward(self._trimmed))
        self._rows = rows
        full = [_scatter(v, rows, first.shape[0]) for v in out_leaves]
        self.output = full[0] if out_tree == LEAF else unflatten(out_tree, full)
        return self.output

    def backward(self, input: Any, grad_output: Any, need_grad_input: bool = True) -> Any:
        need_grad_input = check.flag(
            f"{self.describe()}.backward", "need_grad_input", need_grad_input
        )
        if self._rows is None:
            return super().backward(input, grad_output, need_grad_input=need_grad_input)
        rows, leaves, tree = self._rows, *flatten(input)
        n = np.shape(leaves[0])[0]
        if rows.size == 0:
            grads = [np.zeros(np.shape(v), self.dtype) for v in leaves]
        else:
            g_leaves, g_tree = flatten(grad_output)
            trimmed_g = unflatten(g_tree, [np.asarray(g)[rows] for g in g_leaves])
            g_in = self.module.backward(self._trimmed, trimmed_g, need_grad_input=need_grad_input)
            grads = [] if g_in is None else [_scatter(g, rows, n) for g in flatten(g_in)[0]]
        if not need_grad_input:
            self.grad_input = None
            return None
        self.grad_input = grads[0] if tree == LEAF else unflatten(tree, grads)
        return self.grad_input

    def extra_repr(self) -> str:
        return f"({self.n_input_dim})"


def _scatter(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """`values` (one per kept row) placed at `rows` of an (n, ...) array of zeros."""
    full = np.zeros((n,) + values.shape[1:], values.dtype)
    if rows.size:
        full[rows] = values
    return full
