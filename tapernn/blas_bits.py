"""Which of this process's BLAS GEMMs give the same bits when cut differently (measured once per
dtype, a few milliseconds; BENCHMARKS.md "hci"). tapernn's own choices (layout, plan, whether a
loop splits its batch, how a GEMM is halved) never depend on the BLAS thread count when the
layout is pinned; whether the BLAS then gives the same bits does:

- `threads`: 1 and 2 BLAS threads give the same bits for every probed GEMM (None: not
  measured, the pool could not be set to 2 threads);
- `rows`: a GEMM's two row halves (the batch split's and an owned call's, rows [0, B - B // 2)
  and the rest) give the bits of the whole GEMM's rows;
- `columns`: likewise for its two column halves.

On the Zen 4 AVX-512 VM (OpenBLAS SkylakeX kernels) every 1-vs-2-thread GEMM measured agreed,
and on an Intel Xeon with AVX-512 (SkylakeX kernels too, BENCHMARKS.md "hisa") at 21 shapes in
both dtypes, where row halves kept the bits unless a half was one row (GEMV) or a GEMM small
enough for OpenBLAS's small-matrix kernels ((5, 130, 130); float32 (16, 130, 520); 2- and 3-row
halves of 512^3);
on a Zen 3 AVX2 VM (OpenBLAS 0.3.31, Haswell kernels) none of the three holds in float32 (the
SGEMM kernel's blocks of 8 rows by 4 or 6 columns sum odd and even k apart, its other blocks in
one chain, so an element's bits depend on the block it lands in) and in float64 a row computed
alone in the kernel's 1-row edge block (an odd row count's last row, a GEMV) rounds
differently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .blas import limiter

# (m, k, n) probed: the row counts cover an even count, odd ones (an edge block of one row) and
# the kernels' 4-, 8- and 16-row blocks; most are large enough that OpenBLAS does use two
# threads (it runs small GEMMs on one), the last three small (OpenBLAS builds with small-matrix
# kernels, SkylakeX's, run those on another kernel than the large ones)
SHAPES = (
    (2, 256, 1024),
    (5, 256, 1024),
    (8, 128, 512),
    (33, 256, 1024),
    (64, 96, 384),
    (5, 130, 130),
    (16, 130, 520),
    (3, 13, 52),
)


@dataclass(frozen=True)
class BlasBits:
    dtype: str
    threads: bool | None
    rows: bool
    columns: bool

    def describe(self) -> str:
        def word(same: bool | None) -> str:
            return "not measured" if same is None else ("same bits" if same else "other bits")

        return (
            f"{self.dtype} BLAS: 1 vs 2 threads {word(self.threads)}, row halves "
            f"{word(self.rows)}, column halves {word(self.columns)}"
        )


_probed: dict[str, BlasBits] = {}


def blas_bits(dtype: Any = np.float64) -> BlasBits:
    """What this process's BLAS keeps bit for bit in `dtype` (float32 or float64), probed at the
    first call per dtype (SHAPES, seeded operands) and kept for the process."""
    key = np.dtype(dtype).name
    if key not in _probed:
        _probed[key] = _probe(np.dtype(dtype))
    return _probed[key]


def _probe(dtype: np.dtype) -> BlasBits:
    rng = np.random.default_rng(0)
    threads: bool | None = True
    rows = columns = True
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        with limiter.limit(1):
            whole = a @ b
            h, c = m - m // 2, n - n // 2
            rows &= np.array_equal(whole[:h], a[:h] @ b) and np.array_equal(whole[h:], a[h:] @ b)
            left, right = np.ascontiguousarray(b[:, :c]), np.ascontiguousarray(b[:, c:])
            columns &= np.array_equal(whole[:, :c], a @ left)
            columns &= np.array_equal(whole[:, c:], a @ right)
        with limiter.limit(2):
            pools = limiter.pools()
            if not pools or any(get() != 2 for _, get in pools):
                threads = None
            elif threads:
                threads = np.array_equal(whole, a @ b)
    return BlasBits(dtype.name, threads, bool(rows), bool(columns))
