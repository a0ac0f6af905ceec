"""Masking for variable-length batches (Torch7 rnn's MaskZero family): rows whose input is all
zeros are padding. Pad on the left for recurrent modules with mask_zero(): a masked row's state
is reset, so its real elements start from a zero state."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .. import functional as F
from .. import validation as check
from ..errors import ArgumentTypeError
from ..tracing import Var
from . import row_select as rows
from .criteria import Criterion, arrays_only
from .layers import LookupTable
from .module import Module
from .recurrent import AbstractRecurrent
from .settings import rules, size
from .tree import flatten, unflatten


def row_keep(x: Var, dtype: np.dtype) -> Var:
    """(B,) of dtype, 1 where the row of x (rows on axis 0) is not all zeros, as Torch7's
    `norm(row) ~= 0` (a row holding NaN is kept)."""
    pad = rows.zero_rows(x, tuple(range(1, x.ndim)))
    return F.where(pad, 0, F.ones((x.shape[0],), dtype))


def zero_row_flags(x: np.ndarray) -> np.ndarray:
    """NumPy's twin of row_select.zero_rows for a batch x: True where row is all +/-0."""
    return np.abs(x).reshape(x.shape[0], -1).sum(1) == 0


class MaskZero(Module):
    """Zeroes the output rows of `module` whose input row is all zeros (and their gradients).
    Rows lie on axis 0 of the (first) input; a 1-D input is one unbatched row (Torch7's
    MaskZero(module, 1) on a vector). For recurrent cells prefer `cell.mask_zero()`, which also
    resets the row's state. `n_input_dim` (Torch7's nInputDim): the dims of one row; an input
    of that many dims is one row, one of a dim more a batch (None: 1-D is one row, else a batch).
    Torch7: nn.MaskZero(module, nInputDim)."""

    _drawn_whole = True  # (diagrams: "MaskZero @ GRU", the select inside the box)

    setting_rules = rules(n_input_dim=size(allow_none=True))

    def __init__(self, module: Module, n_input_dim: int | None = None):
        super().__init__()
        self.add_child("0", check.module(self, "module", module))
        self.n_input_dim = n_input_dim
        if isinstance(module, AbstractRecurrent):  # (Element-RNN's MaskZero printed this, #123)
            warnings.warn(
                f"{self.describe()}: zeroes the output rows only, the masked rows' state "
                f"carries on; to reset it (padding), use {module.describe()}.mask_zero(), "
                f"which masks inside the step",
                UserWarning,
                stacklevel=3 if type(self) is MaskZero else 5,  # (TrimZero: its __init__ too)
            )

    def build(self, x: Any) -> Any:
        first, n = flatten(x)[0][0], self.n_input_dim
        self.expect(
            isinstance(first, Var) and first.ndim >= 1 and n in (None, first.ndim, first.ndim - 1),
            f"expects rows: a vector (one row) or a batch with rows on axis 0"
            f"{'' if n is None else f' (n_input_dim {n}: {n} or {n + 1} dims)'}, got "
            f"{getattr(first, 'shape', type(first).__name__)}",
        )
        out = self._children["0"](x)
        one = first.ndim == (n or 1)
        axes = tuple(range(first.ndim)) if one else tuple(range(1, first.ndim))
        # () for one row: every output kept or zeroed whole; a batch's (B, 1, ..): no reshape
        # for outputs of the input's rank (a step loop's batch split knows no reshape)
        pad = rows.zero_rows(first, axes, keepdims=not one)
        leaves, tree = flatten(out)
        return unflatten(tree, [rows.clear(v, pad) for v in leaves])

    @property
    def is_recurrent(self) -> bool:
        return self._children["0"].is_recurrent

    def describe(self) -> str:  # a decorator, as Torch7's: nn.MaskZero @ nn.GRU(3 -> 4)
        return f"nn.{type(self).__name__} @ {self._children['0'].describe()}"

    def __repr__(self) -> str:
        return f"nn.{type(self).__name__} @ {self._children['0']!r}"


class MaskZeroCriterion(Criterion):
    """Applies `criterion` only to rows whose input row is not all zeros: the masked rows add
    nothing to the loss (averages are over the kept rows) and get zero gradient, and their
    targets are never read (padding targets may be anything, e.g. class -1); a batch that is
    all padding gives loss 0 and gradient 0.  Works with MSE, BCE, ClassNLL and CrossEntropy.
    `n_input_dim` (Torch7's nInputDim): the dims of one input row; the input must then be a
    batch of n_input_dim + 1 dims (None: any batch, rows on axis 0). Like Element-RNN's, batches
    only.  Torch7: nn.MaskZeroCriterion(criterion, nInputDim)."""

    setting_rules = rules(n_input_dim=size(allow_none=True))

    def __init__(self, criterion: Criterion, n_input_dim: int | None = None):
        super().__init__()
        self.n_input_dim = n_input_dim
        check.module(self, "criterion", criterion, criterion=True)
        if not hasattr(criterion, "build_masked"):
            raise ArgumentTypeError(
                f"nn.MaskZeroCriterion cannot mask {criterion.describe()}; "
                f"it masks MSE, BCE, ClassNLL and CrossEntropy criteria"
            )
        self.add_child("0", criterion)

    def check_targets(self, input: Any, target: Any) -> None:
        x = np.asarray(input)
        keep = ~zero_row_flags(x) if x.ndim > 1 else np.array([True])
        if keep.any():
            t = np.asarray(target)
            self._children["0"].check_targets(x[keep], t[keep] if t.ndim else t)

    def build(self, x: Var, y: Var) -> Var:
        arrays_only(self, x, y)
        n = self.n_input_dim
        self.expect(
            x.ndim >= 2 and n in (None, x.ndim - 1),
            f"expects a batch (rows on axis 0"
            f"{'' if n is None else f'; n_input_dim {n}: {n + 1} dims'}), got shape {x.shape}",
        )
        keep = row_keep(x, x.dtype)
        if isinstance(y, Var) and y.ndim >= 1 and y.shape[0] == x.shape[0]:
            # a masked row's target is never read (padding may hold any value, e.g. -1)
            y = rows.clear(y, rows.zero_rows(x, tuple(range(1, x.ndim))))
        return self._children["0"].build_masked(x, y, keep)

    def describe(self) -> str:
        return f"nn.MaskZeroCriterion @ {self._children['0'].describe()}"


class LookupTableMaskZero(LookupTable):
    """LookupTable where id 0 is padding: it maps to a zero vector and gets no gradient. Real
    ids are 1..n_index (the weight has n_index + 1 rows, row 0 unused).  Torch7: same name."""

    def __init__(self, n_index: int, n_output: int, rng=None):
        super().__init__(check.size(self, "n_index", n_index) + 1, n_output, rng=rng)
        self.weight.data[0] = 0

    def build(self, ids: Var) -> Var:
        out = super().build(ids)
        return F.where(F.reshape(F.equal(ids, 0), ids.shape + (1,)), 0, out)

    def extra_repr(self) -> str:
        return f"({self.n_index - 1} -> {self.n_output}, id 0 = padding)"
