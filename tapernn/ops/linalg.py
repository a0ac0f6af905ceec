"""Matrix multiplication (both operands at least 2-D; `tn.matmul` promotes 1-D operands)."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..errors import ShapeError
from .registry import register


def matmul_shape(a, b, **_):
    if len(a) < 2 or len(b) < 2:
        raise ShapeError(f"matmul op needs 2-d operands, got {a} and {b}")
    if a[-1] != b[-2]:
        raise ShapeError(f"inner dimensions differ: {a} @ {b} ({a[-1]} != {b[-2]})")
    if len(a) == 2 and len(b) == 2:  # the usual case, without NumPy's help
        return (a[0], b[1])
    try:
        batch = tuple(np.broadcast_shapes(a[:-2], b[:-2]))
    except ValueError:
        raise ShapeError(f"batch dimensions of {a} and {b} do not broadcast") from None
    return batch + (a[-2], b[-1])


register(
    "matmul",
    forward=np.matmul,
    ufunc=np.matmul,
    shape=matmul_shape,
    n_inputs=2,
    zero="any",
    vjp=lambda g, y, a, b, wants: (
        F.unbroadcast(F.matmul(g, F.swap_last(b)), a.shape) if wants[0] else None,
        F.unbroadcast(F.matmul(F.swap_last(a), g), b.shape) if wants[1] else None,
    ),
)
