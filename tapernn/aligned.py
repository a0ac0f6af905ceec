"""Arrays whose data starts on a 64-byte boundary (a cache line, an AVX-512 vector): NumPy's
allocations start wherever malloc puts them (16 bytes past a page for large ones), so a 512-bit
load of a vector-wide row block straddles two cache lines. The packed GEMM's panels read that
way ran 5-20 % slower on an Intel Xeon (BENCHMARKS.md "hkern")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALIGN = 64


class _Holder:
    """An aligned array's `.base`: keeps the larger allocation it lies in alive, and stops
    NumPy's collapsing of view bases there (views of the aligned array have it as their `.base`,
    as an np.empty's have)."""

    __slots__ = ("__array_interface__", "raw")
    base = None  # (the end of a walk up `.base` links, as at an array owning its data)

    def __init__(self, view: np.ndarray, raw: np.ndarray) -> None:
        self.__array_interface__ = view.__array_interface__
        self.raw = raw


def empty(shape: Any, dtype: Any = np.uint8) -> np.ndarray:
    """np.empty(shape, dtype), its data 64-byte aligned."""
    dt = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    # (math.prod and the array interface: np.prod and .ctypes cost ~45 us more a call in a
    # step, their code cold after the GEMMs -- the forward's loop panels, BENCHMARKS "hgap")
    nbytes = math.prod(map(int, shape)) * dt.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGN
    view = raw[start : start + nbytes].view(dt).reshape(shape)
    return np.asarray(_Holder(view, raw))


def zeros(shape: Any, dtype: Any = np.float64) -> np.ndarray:
    """np.zeros(shape, dtype), 64-byte aligned."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def zeros_like(x: np.ndarray) -> np.ndarray:
    """np.zeros_like(x), 64-byte aligned when C-ordered (another layout: NumPy's, kept)."""
    if not x.flags.c_contiguous:
        return np.zeros_like(x)
    return zeros(x.shape, x.dtype)


def astype(x: np.ndarray, dtype: Any) -> np.ndarray:
    """x.astype(dtype, copy=False), a copy 64-byte aligned when C-ordered (x itself when of that
    dtype; another layout: NumPy's copy, its order kept)."""
    if x.dtype == np.dtype(dtype) or not x.flags.c_contiguous:
        return x.astype(dtype, copy=False)
    out = empty(x.shape, dtype)
    np.copyto(out, x, casting="unsafe")
    return out
