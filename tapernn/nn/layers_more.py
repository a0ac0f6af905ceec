"""More torch/nn layers that ported rnn code uses (MuFuRu's ops, attention and LM heads):
constant arithmetic, pointwise functions, table arithmetic, MapTable, Select / Squeeze /
Unsqueeze / Replicate and Min. Torch7 constructor arguments, 0-based dims."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import library
from .. import validation as check
from ..tracing import Var
from .containers import Container
from .layers_extra import HardTanh, _array, _Pointwise, _Reduce
from .module import Module
from .settings import number, optional, rules, size
from .tables import _dim


class AddConstant(Module):
    """y = x + c.  Torch7: nn.AddConstant(c)."""

    setting_rules = rules(constant=number())

    def __init__(self, constant: float):
        super().__init__()
        self.constant = constant

    def build(self, x: Var) -> Var:
        _array(self, x)
        return x + self.constant

    def extra_repr(self) -> str:
        return f"({self.constant})"


class MulConstant(AddConstant):
    """y = c x.  Torch7: nn.MulConstant(c)."""

    def build(self, x: Var) -> Var:
        _array(self, x)
        return x * self.constant


class Power(AddConstant):
    """y = x^p.  Torch7: nn.Power(p)."""

    def build(self, x: Var) -> Var:
        _array(self, x)
        return x**self.constant


class Exp(_Pointwise):
    """exp(x).  Torch7: nn.Exp."""

    fn = staticmethod(F.exp)


class Log(_Pointwise):
    """log(x).  Torch7: nn.Log."""

    fn = staticmethod(F.log)


class Sqrt(_Pointwise):
    """√x; the gradient is 0 where the output is 0, as in Torch7.  Torch7: nn.Sqrt."""

    fn = staticmethod(library.sqrt_torch7)


class Square(_Pointwise):
    """x².  Torch7: nn.Square."""

    fn = staticmethod(lambda x: x * x)


class LogSigmoid(_Pointwise):
    """log σ(x) = −softplus(−x), stable in both tails.  Torch7: nn.LogSigmoid."""

    fn = staticmethod(lambda x: -library.softplus(-x))


class SoftMin(_Pointwise):
    """softmax(−x) over the last dim.  Torch7: nn.SoftMin."""

    fn = staticmethod(lambda x: F.softmax(-x))


class SoftPlus(Module):
    """log(1 + exp(βx)) / β; linear where βx > threshold.  Torch7: nn.SoftPlus(beta, threshold)."""

    setting_rules = rules(beta=number("positive"), threshold=number())

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def build(self, x: Var) -> Var:
        _array(self, x)
        bx = x * self.beta
        smooth = library.softplus(bx) / self.beta
        return F.where(F.greater(bx, self.threshold), x, smooth)

    def extra_repr(self) -> str:
        return f"({self.beta}, {self.threshold})"


class LeakyReLU(Module):
    """x if x > 0 else negval x.  Torch7: nn.LeakyReLU(negval=0.01)."""

    setting_rules = rules(negval=number())

    def __init__(self, negval: float = 0.01):
        super().__init__()
        self.negval = negval

    def build(self, x: Var) -> Var:
        _array(self, x)
        return F.where(F.greater(x, 0.0), x, x * self.negval)

    def extra_repr(self) -> str:
        return f"({self.negval})"


class Clamp(HardTanh):
    """min(max(x, min_value), max_value) with gradient 1 inside, 0 where clamped: a HardTanh
    with bounds given (as Torch7's, a subclass: a child HardTanh kept the constructor's bounds
    while `c.min_value = 0` changed only Clamp's copy, silently).
    Torch7: nn.Clamp(min_value, max_value)."""

    def __init__(self, min_value: float, max_value: float):
        super().__init__(min_value, max_value)


class _TableOp(Module):
    """An elementwise operation over a list of two (or more) same-shaped arrays."""

    op = staticmethod(F.sub)
    arity: int | None = 2

    def build(self, xs: Any) -> Var:
        self.expect(
            isinstance(xs, list)
            and len(xs) >= 2
            and all(isinstance(v, Var) for v in xs)
            and (self.arity is None or len(xs) == self.arity),
            f"expects a list of {self.arity or 'two or more'} arrays",
        )
        out = xs[0]
        for x in xs[1:]:
            self.expect(x.shape == out.shape, f"entries have shapes {out.shape} and {x.shape}")
            out = self.op(out, x)
        return out


class CSubTable(_TableOp):
    """a − b for [a, b].  Torch7: nn.CSubTable."""


class CDivTable(_TableOp):
    """a / b for [a, b].  Torch7: nn.CDivTable."""

    op = staticmethod(F.div)


class CMaxTable(_TableOp):
    """Elementwise maximum of the entries; a tie's gradient goes to the first of them, as in
    Torch7 (`tn.maximum` shares it).  Torch7: nn.CMaxTable."""

    op = staticmethod(library.maximum_first)
    arity = None


class CMinTable(_TableOp):
    """Elementwise minimum of the entries; a tie's gradient goes to the first of them, as in
    Torch7 (`tn.minimum` shares it).  Torch7: nn.CMinTable."""

    op = staticmethod(library.minimum_first)
    arity = None


class MapTable(Container):
    """Applies one module to every entry of a list (its parameters shared by all entries).
    Torch7: nn.MapTable(module)."""

    def __init__(self, module: Module):
        super().__init__()
        self.add(check.module(self, "module", module))

    def build(self, xs: Any) -> list:
        self.expect(isinstance(xs, list), "expects a list")
        return [self.get(0)(x) for x in xs]


class Min(_Reduce):
    """Minimum over `dimension` (batch rule as Sum); a tie's gradient goes to the first
    minimal entry, as in Torch7.  Torch7: nn.Min(dimension, nInputDims)."""

    reduce = staticmethod(lambda x, d: -library.first_max(-x, d))
    picks_an_entry = True


class Select(Module):
    """x[..., index, ...] along `dimension` (both 0-based, negative from the end).
    Torch7: nn.Select(dimension, index)."""

    setting_rules = rules(dimension=check.integer, index=check.integer)

    def __init__(self, dimension: int, index: int):
        super().__init__()
        self.dimension, self.index = dimension, index

    def build(self, x: Var) -> Var:
        _array(self, x)
        self.expect(
            -x.ndim <= self.dimension < x.ndim,
            f"dimension {self.dimension} out of range for input shape {x.shape}",
        )
        d = self.dimension % x.ndim
        self.expect(
            -x.shape[d] <= self.index < x.shape[d],
            f"index {self.index} out of range for dimension {d} of size {x.shape[d]}",
        )
        return x[(slice(None),) * d + (self.index,)]

    def extra_repr(self) -> str:
        return f"({self.dimension}, {self.index})"


class Squeeze(Module):
    """Drops size-1 dims (or only `dim`, shifted past a batch dim as SplitTable).
    Torch7: nn.Squeeze(dim, numInputDims)."""

    setting_rules = rules(dim=optional(check.integer), n_input_dims=size(allow_none=True))

    def __init__(self, dim: int | None = None, n_input_dims: int | None = None):
        super().__init__()
        self.dim, self.n_input_dims = dim, n_input_dims

    def build(self, x: Var) -> Var:
        _array(self, x)
        if self.dim is None:
            return F.reshape(x, tuple(s for s in x.shape if s != 1))
        d = _dim(int(self.dim), x.ndim, self.n_input_dims)
        self.expect(0 <= d < x.ndim, f"dimension {self.dim} out of range for input shape {x.shape}")
        return F.reshape(x, x.shape[:d] + x.shape[d + 1 :]) if x.shape[d] == 1 else x


class Unsqueeze(Module):
    """Inserts a size-1 dim at `pos` (shifted past a batch dim when the input has
    n_input_dims + 1 dims).  Torch7: nn.Unsqueeze(pos, numInputDims)."""

    setting_rules = rules(pos=check.integer, n_input_dims=size(allow_none=True))

    def __init__(self, pos: int, n_input_dims: int | None = None):
        super().__init__()
        self.pos, self.n_input_dims = pos, n_input_dims

    def build(self, x: Var) -> Var:
        _array(self, x)
        p = (
            self.pos + 1
            if (self.n_input_dims is not None and x.ndim == self.n_input_dims + 1)
            else self.pos
        )
        self.expect(0 <= p <= x.ndim, f"position {self.pos} out of range for input shape {x.shape}")
        return F.reshape(x, x.shape[:p] + (1,) + x.shape[p:])

    def extra_repr(self) -> str:
        return f"({self.pos})"


class Replicate(Module):
    """Repeats the input n_features times along a new dim `dim`; the gradient sums over it.
    Torch7: nn.Replicate(nFeatures, dim, nDim)."""

    setting_rules = rules(n_features=size(), dim=check.integer, n_dim=size(allow_none=True))

    def __init__(self, n_features: int, dim: int = 0, n_dim: int | None = None):
        super().__init__()
        self.n_features, self.dim, self.n_dim = n_features, dim, n_dim

    def build(self, x: Var) -> Var:
        _array(self, x)
        d = self.dim + 1 if (self.n_dim is not None and x.ndim == self.n_dim + 1) else self.dim
        self.expect(
            0 <= d <= x.ndim, f"dimension {self.dim} out of range for input shape {x.shape}"
        )
        y = F.reshape(x, x.shape[:d] + (1,) + x.shape[d:])
        return F.broadcast_to(y, x.shape[:d] + (self.n_features,) + x.shape[d:])

    def extra_repr(self) -> str:
        return f"({self.n_features}, {self.dim})"
