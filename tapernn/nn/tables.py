"""Table modules: SplitTable and JoinTable (array <-> list), SelectTable and NarrowTable.
Dimensions and indices are 0-based; negative values count from the end."""

from __future__ import annotations

from .. import functional as F
from .. import validation as check
from ..errors import ShapeError
from ..tracing import Var
from .module import Module
from .settings import rules, size


def _dim(dim: int, ndim: int, n_input_dims: int | None) -> int:
    if dim < 0:
        return dim + ndim
    if n_input_dims is not None and ndim == n_input_dims + 1:
        return dim + 1  # skip a leading batch dimension
    return dim


class SplitTable(Module):
    """Splits an array along `dim` into a list.  Torch7: nn.SplitTable(dim+1, nInputDims).

    Shapes: (T, B, D) with dim 0 -> T arrays (B, D). If `n_input_dims` is given and the input has
    one more dimension, `dim` shifts by one (a leading batch dimension).
    """

    setting_rules = rules(dim=check.integer, n_input_dims=size(allow_none=True))

    def __init__(self, dim: int, n_input_dims: int | None = None):
        super().__init__()
        self.dim, self.n_input_dims = dim, n_input_dims

    def build(self, x: Var) -> list:
        self.expect(isinstance(x, Var), "expects an array, got a list")
        d = _dim(self.dim, x.ndim, self.n_input_dims)
        self.expect(0 <= d < x.ndim, f"dimension {self.dim} out of range for input shape {x.shape}")
        lead = (slice(None),) * d
        return [x[lead + (k,)] for k in range(x.shape[d])]

    def extra_repr(self) -> str:
        return f"({self.dim}{'' if self.n_input_dims is None else f', {self.n_input_dims}'})"


class JoinTable(Module):
    """Concatenates a list of arrays along `dim`.  Torch7: nn.JoinTable(dim+1, nInputDims)."""

    setting_rules = rules(dim=check.integer, n_input_dims=size(allow_none=True))

    def __init__(self, dim: int, n_input_dims: int | None = None):
        super().__init__()
        self.dim, self.n_input_dims = dim, n_input_dims

    def build(self, xs: list) -> Var:
        self.expect(isinstance(xs, list) and len(xs) > 0, "expects a non-empty list", ShapeError)
        self.expect(
            all(isinstance(x, Var) for x in xs), "expects a list of arrays, got a nested list"
        )
        d = _dim(self.dim, xs[0].ndim, self.n_input_dims)
        self.expect(
            0 <= d < xs[0].ndim,
            f"dimension {self.dim} out of range for inputs of shape {xs[0].shape}",
        )
        shapes = [x.shape[:d] + x.shape[d + 1 :] for x in xs]
        self.expect(
            all(s == shapes[0] for s in shapes),
            f"inputs must agree on every dimension but {d}, got shapes "
            f"{', '.join(str(x.shape) for x in xs)}",
        )
        return F.concat(xs, axis=d)

    def extra_repr(self) -> str:
        return f"({self.dim}{'' if self.n_input_dims is None else f', {self.n_input_dims}'})"


class SelectTable(Module):
    """Entry `index` of a list (negative from the end: -1 is the last step). The gradient of
    every other entry is zeros. An array input (e.g. a Sequencer's (T, B, H) output) is treated
    as the list of its slices along axis 0."""

    setting_rules = rules(index=check.integer)

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def build(self, xs: list):
        self.expect(
            isinstance(xs, list) or (isinstance(xs, Var) and xs.ndim >= 1),
            "expects a list (or an array indexed along axis 0)",
        )
        self.expect(
            -len(xs) <= self.index < len(xs),
            f"index {self.index} out of range for a list of {len(xs)}",
            ShapeError,
        )
        return xs[self.index]

    def extra_repr(self) -> str:
        return f"({self.index})"


class NarrowTable(Module):
    """Entries offset .. offset+length-1 of a list."""

    setting_rules = rules(offset=check.integer, length=size())

    def __init__(self, offset: int, length: int = 1):
        super().__init__()
        self.offset, self.length = offset, length

    def build(self, xs: list) -> list:
        self.expect(isinstance(xs, list), "expects a list")
        start = self.offset + len(xs) if self.offset < 0 else self.offset
        self.expect(
            0 <= start and start + self.length <= len(xs),
            f"[{self.offset}, {self.offset + self.length}) out of range for a list of {len(xs)}",
            ShapeError,
        )
        return xs[start : start + self.length]

    def extra_repr(self) -> str:
        return f"({self.offset}, {self.length})"
