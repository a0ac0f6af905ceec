"""Functions composed of kernel ops, with no op of their own (`tn.mean`, `tn.stack`, `tn.split`,
`Var.mean`): a library above the op set, so the kernel's functional.py holds only what records
an op."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .errors import ShapeError
from .functional import concat, equal, exp, greater, log, reshape, sqrt, stop_gradient, where
from .functional import max as _max
from .functional import sum as _sum
from .ops.registry import normalize_axes, normalize_axis
from .tracing import Var, as_var


def mean(x: Var, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Var:
    x = as_var(x)
    axes = normalize_axes(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    return _sum(x, axes, keepdims) / float(count or 1)


def first_max(x: Var, axis: int) -> Var:
    """np.max over one axis with Torch7's gradient (nn.Max, nn.Min): all of it to the first
    maximal entry, where `tn.max` shares it between ties (as torch.amax and JAX do)."""
    ax = normalize_axis(axis, x.ndim)
    top = stop_gradient(_max(x, ax))
    pos = -np.arange(x.shape[ax], dtype=x.dtype).reshape((-1,) + (1,) * (x.ndim - ax - 1))
    hit = equal(x, reshape(top, x.shape[:ax] + (1,) + x.shape[ax + 1 :]))
    first = _max(where(hit, pos, -np.inf), ax, keepdims=True)
    picked = _sum(where(equal(pos, first), x, 0.0), ax)  # the maximum exactly, one entry's
    return where(equal(top, top), picked, top)  # a NaN stays NaN


def _later_if(wins: Var, a: Var, b: Var) -> Var:
    """b where it wins, else a (Torch7's maskedCopy of a strictly better later entry: a tie's
    gradient goes all to the first entry); a NaN in either stays NaN, as np.maximum's."""
    return where(wins, b, where(equal(b, b), a, b))


def maximum_first(a: Var, b: Var) -> Var:
    """np.maximum(a, b) with Torch7's gradient (nn.CMaxTable, nn.Max over a stacked pair): a
    tie's gradient all to a, where `tn.maximum` shares it (as torch.maximum and JAX do)."""
    return _later_if(greater(b, a), a, b)


def minimum_first(a: Var, b: Var) -> Var:
    """np.minimum(a, b) with Torch7's gradient: a tie's gradient all to a (`maximum_first`)."""
    return _later_if(greater(a, b), a, b)


def softplus(x: Var) -> Var:
    """log(1 + exp(x)), stable in both tails, with the derivative sigmoid(x) everywhere: both
    pieces take the x <= 0 branch at x = 0 (relu(x) + log(1 + exp(-|x|)) gives 0 there, where
    relu and abs each have the derivative 0)."""
    up = greater(x, 0.0)
    # -|x| as a select: x - 2 relu(x) made inf - inf = NaN at x = +inf (softplus(inf) = inf)
    return where(up, x, 0.0) + log(1 + exp(where(up, -x, x)))


def sqrt_torch7(x: Var) -> Var:
    """sqrt(x) whose gradient is 0 where the output is 0, as Torch7's nn.Sqrt (THNN), not inf
    (which makes inf * 0 = NaN downstream, e.g. in sqrt(|a - b|) at a == b)."""
    pos = greater(x, 0.0)
    return where(pos, sqrt(where(pos, x, 1.0)), stop_gradient(sqrt(x)))


def stack(xs: Sequence[Var], axis: int = 0) -> Var:
    xs = list(xs)
    if not xs:
        raise ShapeError("stack: needs at least one value")
    like = next((x for x in xs if isinstance(x, Var)), None)
    xs = [as_var(x, like) for x in xs]
    ax = normalize_axis(axis, xs[0].ndim + 1)
    return concat([reshape(x, x.shape[:ax] + (1,) + x.shape[ax:]) for x in xs], axis=ax)


def split(x: Var, indices_or_sections: int | Sequence[int], axis: int = 0) -> list[Var]:
    """NumPy's split: an int is a number of equal sections, a list the split points."""
    ax = normalize_axis(axis, x.ndim)
    n = x.shape[ax]
    if isinstance(indices_or_sections, (int, np.integer)):
        k = int(indices_or_sections)
        if k <= 0 or n % k:
            raise ShapeError(f"split: axis of length {n} does not divide into {k} equal parts")
        points = [n // k * j for j in range(1, k)]
    else:
        points = [int(p) for p in indices_or_sections]
    bounds = [0] + points + [n]
    lead = (slice(None),) * ax
    return [x[lead + (slice(a, b),)] for a, b in itertools.pairwise(bounds)]


Var.mean = lambda self, axis=None, keepdims=False: mean(self, axis, keepdims)
