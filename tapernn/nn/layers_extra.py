"""The torch/nn layers Element-RNN code uses around recurrent modules (Add, Mul, CMul, Copy,
Narrow, View, Transpose, Euclidean, Mean, Sum, Max, Abs, HardTanh, ELU, SoftSign) and rnn's small
helpers (LinearNoBias, ZeroGrad, CopyGrad, SAdd). Torch7 constructor arguments, 0-based dims."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .. import library
from .. import validation as check
from ..tracing import Var
from .layers import Linear, last_dim
from .module import Module
from .settings import (
    dim_pairs,
    fixed,
    float_dtype,
    nonzero_integer,
    number,
    optional,
    ordered,
    rules,
    size,
    view_shape,
    weight_shape,
)
from .tables import _dim


def _array(module: Module, x: Any) -> None:
    module.expect(
        isinstance(x, Var),
        "expects an array, got a list"
        if isinstance(x, list)
        else f"expects an array, got {type(x).__name__}",
    )


class LinearNoBias(Linear):
    """y = x Wᵀ, weight (out, in), init U(±1/√in).  Torch7: nn.LinearNoBias (rnn)."""

    def __init__(self, input_size: int, output_size: int, rng=None):
        super().__init__(input_size, output_size, bias=False, rng=rng)


class Add(Module):
    """y = x + b: b has `input_size` entries, or one when `scalar` (init U(±1/√input_size)).
    Torch7: nn.Add(inputSize, scalar)."""

    setting_rules = rules(input_size=fixed(size()), scalar=fixed(check.flag))

    def __init__(self, input_size: int, scalar: bool = False, rng=None):
        super().__init__()
        self.input_size, self.scalar = input_size, scalar
        rng = check.generator(self, "rng", rng)
        self.parameter(
            "bias",
            (1,) if self.scalar else (self.input_size,),
            bound=1 / np.sqrt(self.input_size),
            rng=rng,
        )

    def build(self, x: Var) -> Var:
        if not self.scalar:
            last_dim(self, x, self.input_size)
        _array(self, x)
        return x + self.bias

    def extra_repr(self) -> str:
        return f"({self.input_size}{', scalar' if self.scalar else ''})"


class Mul(Module):
    """y = w x with one learned scalar w, init U(-1, 1).  Torch7: nn.Mul()."""

    def __init__(self, rng=None):
        super().__init__()
        self.parameter("weight", (1,), bound=1.0, rng=check.generator(self, "rng", rng))

    def build(self, x: Var) -> Var:
        _array(self, x)
        return x * self.weight


class CMul(Module):
    """y = x ⊙ w, w of shape `size` broadcast against the trailing dims of x (a batch leads;
    a 1 in `size` spans that dim, as Torch7's CMul(5, 1) on a 5x4 input), init U(±1/√w.size).
    Torch7: nn.CMul(size...)."""

    setting_rules = rules(size=fixed(weight_shape))

    def __init__(self, *size: int, rng=None):
        super().__init__()
        self.size = size
        self.parameter(
            "weight",
            self.size,
            bound=1 / np.sqrt(np.prod(self.size)),
            rng=check.generator(self, "rng", rng),
        )

    def build(self, x: Var) -> Var:
        _array(self, x)
        n = len(self.size)
        self.expect(
            x.ndim >= n and all(w in (1, d) for w, d in zip(self.size, x.shape[x.ndim - n :])),
            f"expected input ending in shape {self.size} (a 1 spans any size), got {x.shape}",
        )
        return x * self.weight

    def extra_repr(self) -> str:
        return f"({', '.join(map(str, self.size))})"


class Copy(Module):
    """Copies its input, converting to `out_dtype` if given (the gradient converts back).
    Torch7: nn.Copy(intype, outtype)."""

    setting_rules = rules(out_dtype=optional(float_dtype))

    def __init__(self, out_dtype: Any = None):
        super().__init__()
        self.out_dtype = out_dtype

    def build(self, x: Var) -> Var:
        _array(self, x)
        return F.cast(x, self.out_dtype) if self.out_dtype is not None else x + 0

    def extra_repr(self) -> str:
        return "" if self.out_dtype is None else f"({self.out_dtype.name})"


class ZeroGrad(Module):
    """Identity forward, zero gradient backward.  Torch7: nn.ZeroGrad (rnn)."""

    def build(self, x: Var) -> Var:
        _array(self, x)
        return F.stop_gradient(x)


class CopyGrad(Module):
    """Identity whose gradient is a copy of grad_output (in tapernn every gradient is already
    its own array).  Torch7: nn.CopyGrad (rnn)."""

    def build(self, x: Any) -> Any:
        return x


class SAdd(Module):
    """y = x + addend, or -(x + addend) when `negate` (GRU's 1 - z is SAdd(-1, True)).
    Torch7: nn.SAdd(addend, negate) (rnn)."""

    setting_rules = rules(addend=number(), negate=check.flag)

    def __init__(self, addend: float, negate: bool = False):
        super().__init__()
        self.addend, self.negate = addend, negate

    def build(self, x: Var) -> Var:
        _array(self, x)
        y = x + self.addend
        return -y if self.negate else y

    def extra_repr(self) -> str:
        return f"({self.addend}{', negate' if self.negate else ''})"


class Narrow(Module):
    """`length` entries of dim `dimension` from `offset` (0-based; a negative offset counts from
    the end, a negative length -k stops k-1 entries before the end: -1 = to the end).
    Torch7: nn.Narrow(dimension, offset, length) with 1-based dimension and offset."""

    setting_rules = rules(dimension=check.integer, offset=check.integer, length=nonzero_integer)

    def __init__(self, dimension: int, offset: int, length: int = 1):
        super().__init__()
        self.dimension, self.offset, self.length = dimension, offset, length

    def build(self, x: Var) -> Var:
        _array(self, x)
        self.expect(
            -x.ndim <= self.dimension < x.ndim,
            f"dimension {self.dimension} out of range for input shape {x.shape}",
        )
        d = self.dimension % x.ndim
        size = x.shape[d]
        start = self.offset + size if self.offset < 0 else self.offset
        length = size - start + self.length + 1 if self.length < 0 else self.length
        self.expect(
            0 <= start and length >= 1 and start + length <= size,
            f"offset {self.offset}, length {self.length} out of range for dimension {d} "
            f"of size {size} (input shape {x.shape})",
        )
        return x[(slice(None),) * d + (slice(start, start + length),)]

    def extra_repr(self) -> str:
        return f"({self.dimension}, {self.offset}, {self.length})"


class View(Module):
    """Reshape to `size` (one entry may be -1). With `set_num_input_dims(n)`, an input with more
    than n dims keeps its leading (batch) dims; without it, an input holding a multiple of the
    view's elements keeps its first dim as the batch.  Torch7: nn.View(sizes)."""

    setting_rules = rules(
        size=view_shape,
        num_input_dims=size(allow_none=True),
    )

    def __init__(self, *size: int):
        super().__init__()
        self.size = size
        self.num_input_dims: int | None = None

    def set_num_input_dims(self, n: int) -> View:
        self.num_input_dims = n
        return self

    def build(self, x: Var) -> Var:
        _array(self, x)
        known = int(np.prod([s for s in self.size if s != -1]))
        if self.num_input_dims is not None and x.ndim > self.num_input_dims:
            lead = x.shape[: x.ndim - self.num_input_dims]
        elif -1 not in self.size and x.size != known and x.ndim > 1:
            lead = x.shape[:1]
        else:
            lead = ()
        rest = x.size // max(int(np.prod(lead)), 1)
        ok = rest % known == 0 if -1 in self.size else rest == known
        self.expect(
            ok,
            f"cannot view input of shape {x.shape} as {self.size}"
            + (f" after batch dims {lead}" if lead else ""),
        )
        return F.reshape(x, lead + self.size)

    def extra_repr(self) -> str:
        return f"({', '.join(map(str, self.size))})"


class Transpose(Module):
    """Swaps each given pair of dims in turn: Transpose((0, 1), (2, 3)).
    Torch7: nn.Transpose({1, 2}, {3, 4})."""

    setting_rules = rules(permutations=dim_pairs)

    def __init__(self, *permutations: tuple[int, int]):
        super().__init__()
        self.permutations = permutations

    def build(self, x: Var) -> Var:
        _array(self, x)
        axes = list(range(x.ndim))
        for a, b in self.permutations:
            self.expect(
                -x.ndim <= a < x.ndim and -x.ndim <= b < x.ndim,
                f"cannot swap dims {a} and {b} of input shape {x.shape}",
            )
            axes[a], axes[b] = axes[b], axes[a]
        return F.transpose(x, axes)

    def extra_repr(self) -> str:
        return f"({', '.join(map(str, self.permutations))})"


class Euclidean(Module):
    """y_j = ‖x − w_j‖₂ for each column w_j of weight (input_size, output_size), init
    U(±1/√input_size); the gradient at zero distance is 0 (Torch7 divides by y + 1e-7).
    Shapes: (..., in) -> (..., out).  Torch7: nn.Euclidean(in, out)."""

    setting_rules = rules(input_size=fixed(size()), output_size=fixed(size()))

    def __init__(self, input_size: int, output_size: int, rng=None):
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.parameter(
            "weight",
            (self.input_size, self.output_size),
            bound=1 / np.sqrt(self.input_size),
            rng=check.generator(self, "rng", rng),
        )

    def build(self, x: Var) -> Var:
        last_dim(self, x, self.input_size)
        diff = F.reshape(x, x.shape + (1,)) - self.weight
        return library.sqrt_torch7(F.sum(diff * diff, -2))  # (at zero distance: 0, not NaN)

    def extra_repr(self) -> str:
        return f"({self.input_size} -> {self.output_size})"


class _Reduce(Module):
    reduce = staticmethod(F.sum)
    picks_an_entry = False  # Max, Min: an empty dimension has no value to give

    setting_rules = rules(dimension=check.integer, n_input_dims=size(allow_none=True))

    def __init__(self, dimension: int = 0, n_input_dims: int | None = None):
        super().__init__()
        self.dimension, self.n_input_dims = dimension, n_input_dims

    def build(self, x: Var) -> Var:
        _array(self, x)
        d = _dim(self.dimension, x.ndim, self.n_input_dims)
        self.expect(
            0 <= d < x.ndim, f"dimension {self.dimension} out of range for input shape {x.shape}"
        )
        self.expect(
            x.shape[d] > 0 or not self.picks_an_entry,
            f"dimension {self.dimension} of input shape {x.shape} is empty: no entry to pick",
        )
        return self.reduce(x, d)

    def extra_repr(self) -> str:
        extra = "" if self.n_input_dims is None else f", {self.n_input_dims}"
        return f"({self.dimension}{extra})"


class Sum(_Reduce):
    """Sum over `dimension` (0-based; shifted past a leading batch dim when the input has
    `n_input_dims` + 1 dims, as SplitTable); `size_average` divides by its length.
    Torch7: nn.Sum(dimension, nInputDims, sizeAverage)."""

    setting_rules = rules(size_average=check.flag)

    def __init__(
        self, dimension: int = 0, n_input_dims: int | None = None, size_average: bool = False
    ):
        super().__init__(dimension, n_input_dims)
        self.size_average = size_average

    def reduce(self, x: Var, d: int) -> Var:  # (read at each build: size_average may change)
        return (library.mean if self.size_average else F.sum)(x, d)

    def extra_repr(self) -> str:
        if not self.size_average:
            return super().extra_repr()
        return f"({self.dimension}, {self.n_input_dims}, size_average=True)"


class Mean(_Reduce):
    """Mean over `dimension` (batch rule as Sum).  Torch7: nn.Mean(dimension, nInputDims)."""

    reduce = staticmethod(library.mean)


class Max(_Reduce):
    """Maximum over `dimension` (batch rule as Sum); the gradient goes to the maximum, all of it
    to the first of tied entries as in Torch7 (`tn.max` shares it between them).
    Torch7: nn.Max(dimension, nInputDims) (values only)."""

    reduce = staticmethod(library.first_max)
    picks_an_entry = True


class _Pointwise(Module):
    def build(self, x: Var) -> Var:
        _array(self, x)
        return self.fn(x)


class Abs(_Pointwise):
    """|x|; the gradient at 0 is +1, as in Torch7 (`tn.abs`: 0).  Torch7: nn.Abs."""

    # np.abs's +0.0 at -0.0 (THNN's fabs), plus x where x == ±0 (adding ±0) for the derivative
    # +1 there (THNN: z >= 0 ? g : -g) where tn.abs's is 0
    fn = staticmethod(lambda x: F.abs(x) + F.where(F.equal(x, 0.0), x, 0.0))


class SoftSign(_Pointwise):
    """x / (1 + |x|).  Torch7: nn.SoftSign."""

    fn = staticmethod(lambda x: x / (1 + F.abs(x)))


class HardTanh(Module):
    """min(max(x, min_value), max_value); gradient 1 strictly inside, 0 outside.
    Torch7: nn.HardTanh(min_value=-1, max_value=1)."""

    setting_rules = rules(
        min_value=ordered("min_value", "max_value"), max_value=ordered("min_value", "max_value")
    )

    def __init__(self, min_value: float = -1.0, max_value: float = 1.0):
        super().__init__()
        self.min_value, self.max_value = min_value, max_value

    def build(self, x: Var) -> Var:
        _array(self, x)
        lo, hi = self.min_value, self.max_value
        # selects, not products: x = +/-inf is clamped (a product gave 0 * inf = NaN); a NaN
        # stays NaN (as PyTorch's; no bound would be right)
        inside = F.greater(F.minimum(x - lo, hi - x), 0.0)  # strictly inside (NaN: no)
        clamped = F.where(F.greater(x, hi), hi, F.where(F.greater(lo, x), lo, x))
        return F.where(inside, x, F.stop_gradient(clamped))  # gradient 1 inside, else 0

    def extra_repr(self) -> str:
        return f"({self.min_value}, {self.max_value})"


class ELU(Module):
    """x if x > 0 else alpha (exp(x) − 1).  Torch7: nn.ELU(alpha=1)."""

    setting_rules = rules(alpha=number())

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha

    def build(self, x: Var) -> Var:
        _array(self, x)
        # exp never sees a large x; at x = 0 the gradient is alpha, as Torch7's and PyTorch's
        # (minimum(x, 0) would share the tie: alpha / 2)
        neg = self.alpha * (F.exp(F.where(F.greater(x, 0.0), 0.0, x)) - 1)
        return F.where(F.greater(x, 0.0), x, neg)

    def extra_repr(self) -> str:
        return f"({self.alpha})"


class Padding(Module):
    """Inserts |pad| entries equal to `value` along `dim`: pad < 0 before position `index`
    counted from the start (0: before the first entry), pad > 0 at `index` counted from the end
    (0: after the last entry). `dim` shifts past a leading batch dim when the input has
    n_input_dim + 1 dims.  Torch7: nn.Padding(dim, pad, nInputDim, value, index) (1-based)."""

    setting_rules = rules(
        dim=check.integer,
        pad=nonzero_integer,
        n_input_dim=size(allow_none=True),
        value=number(),
        index=check.integer,
    )

    def __init__(
        self, dim: int, pad: int, n_input_dim: int | None = None, value: float = 0.0, index: int = 0
    ):
        super().__init__()
        self.dim, self.pad, self.n_input_dim = dim, pad, n_input_dim
        self.value, self.index = value, index

    def build(self, x: Var) -> Var:
        _array(self, x)
        d = _dim(self.dim, x.ndim, self.n_input_dim)
        self.expect(0 <= d < x.ndim, f"dimension {self.dim} out of range for input shape {x.shape}")
        size = x.shape[d]
        at = self.index if self.pad < 0 else size - self.index
        self.expect(
            0 <= at <= size, f"index {self.index} out of range for dimension {d} of size {size}"
        )
        fill = F.zeros(x.shape[:d] + (abs(self.pad),) + x.shape[d + 1 :], x.dtype) + self.value
        lead = (slice(None),) * d
        parts = [x[lead + (slice(0, at),)], fill, x[lead + (slice(at, size),)]]
        return F.concat([p for p in parts if p.shape[d] > 0], axis=d)

    def extra_repr(self) -> str:
        return f"({self.dim}, {self.pad})"


class ExpandAs(Module):
    """[a, b] -> [a, b broadcast to a's shape]; b's gradient is summed back over the broadcast
    dims.  Torch7: nn.ExpandAs (rnn)."""

    def build(self, xs: Any) -> list:
        self.expect(
            isinstance(xs, list) and len(xs) == 2 and all(isinstance(v, Var) for v in xs),
            "expects a list of two arrays [a, b]",
        )
        a, b = xs
        self.expect(
            b.ndim == a.ndim and all(s in (1, t) for s, t in zip(b.shape, a.shape)),
            f"cannot expand shape {b.shape} as {a.shape}",
        )
        return [a, F.broadcast_to(b, a.shape)]
