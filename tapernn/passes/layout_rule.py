"""The "auto" layout rule (issue 19): time the loop's recurrent GEMMs in both orientations once
per (shapes, dtype, BLAS) and keep the answer for the process and on disk (FFTW-style planning,
wisdom included: passes/layout_cache); tiny GEMMs stay batch-major without timing (Python
overhead, not the GEMM, is their cost)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter

import numpy as np

from ..blas import limiter, program_threads
from ..graph import Graph
from . import layout_cache

MIN_FLOPS = 2_000_000  # a recurrent GEMM pair smaller than this is not timed: batch-major
# Feature-major is picked when its GEMMs take under MARGIN of batch-major's, in two rounds of
# timing. Measured (BENCHMARKS.md, 2026-12-03, OpenBLAS, 1 thread, f32): where the GEMMs tie,
# the whole step ties at (32, 50, 256) and gains ~7 % at (32, 50, 512), while the transposed
# copies at the loop's edges cost T*B*4H more bytes (resident +50 %): only a large GEMM
# advantage pays for that. Under load the ratio wanders (0.74-1.25 seen for equal GEMMs).
MARGIN = 0.7
BUDGET = 0.05  # seconds of timing per shape, roughly (each orientation is timed twice)
_DECIDED: dict[tuple, tuple[str, str]] = {}


def recurrent_gemms(body: Graph, nc: int) -> list[tuple[int, int, int]]:
    """(B, K, N) of each matmul (B, K) @ (K, N) in `body` reading a 2-D carry."""
    carries = {i for i in body.inputs[:nc] if i.ndim == 2}
    out = []
    for n in body.nodes:
        if n.op == "matmul" and n.inputs[0] in carries and n.inputs[1].ndim == 2:
            (b, k), n_ = n.inputs[0].shape, n.inputs[1].shape[1]
            out.append((b, k, n_))
    return out


def choose(body: Graph, nc: int, packed: tuple[int, int] | None = None) -> tuple[str, str]:
    """("batch" | "feature", why) for the loop over `body`: decided once per (GEMMs, dtype, BLAS
    threads) in the process, and kept on disk for later processes (layout_cache). `packed`:
    (min rows, min weight elements) of the step GEMMs the program runs packed (numba backend,
    AVX-512: backends/packed.rule); a loop whose recurrent GEMMs all qualify stays batch-major
    untimed: the packed batch-major GEMMs ran in 0.5-0.9x of feature-major OpenBLAS's time (a tie
    at B = 4-8, H = 128 f32), where the OpenBLAS timing below would have picked feature-major
    (BENCHMARKS.md, hgemm2), and a feature-major loop is not packed."""
    gemms = recurrent_gemms(body, nc)
    dtype = np.dtype(body.outputs[0].dtype if body.outputs else np.float64)
    if not gemms:
        return "batch", "no recurrent GEMM on a 2-D carry"
    if (
        packed is not None
        and dtype in (np.float32, np.float64)
        and all(b >= packed[0] and k * n >= packed[1] for b, k, n in gemms)
    ):
        return "batch", "its recurrent GEMMs run packed (numba, AVX-512): not timed"
    flops = sum(4 * b * k * n for b, k, n in gemms)  # forward and backward products
    if flops < MIN_FLOPS:
        return "batch", f"recurrent GEMMs of {flops} flops: too small to time"
    counts = tuple(sorted(Counter(gemms).items()))
    threads = program_threads(max(2 * b * k * n for b, k, n in gemms))  # as the loop runs
    key = (counts, dtype.str, threads, _blas())
    if key not in _DECIDED:
        disk = layout_cache.key(counts, dtype.str, key[2:])
        found = layout_cache.lookup(disk)
        if found is not None:
            _DECIDED[key] = (found[0], f"{found[1]}; decided by an earlier process")
        else:
            _DECIDED[key] = _measure(counts, dtype, threads)
            layout_cache.store(disk, *_DECIDED[key])
    return _DECIDED[key]


def _measure(counts: tuple, dtype: np.dtype, threads: int | None) -> tuple[str, str]:
    """Time each distinct GEMM (weighted by how often the body has it) in both orientations;
    feature-major when it is under MARGIN of batch-major in two rounds (a first round that is
    not ends it: the second could not change the pick)."""
    rounds = []
    with limiter.limit(threads) if threads is not None else contextlib.nullcontext():
        for _ in range(2):
            times = [(c, time_orientations(b, k, n, dtype)) for (b, k, n), c in counts]
            rounds.append((sum(c * t[0] for c, t in times), sum(c * t[1] for c, t in times)))
            if not rounds[-1][1] < MARGIN * rounds[-1][0]:
                break
    pick = "feature" if len(rounds) == 2 and all(f < MARGIN * b for b, f in rounds) else "batch"
    tb, tf = min(r[0] for r in rounds), min(r[1] for r in rounds)
    shown = ", ".join(
        f"{f'{c} x ' if c > 1 else ''}({b}, {k}) @ ({k}, {n})" for (b, k, n), c in counts
    )
    return pick, (
        f"{shown} {dtype.name}, forward + backward GEMMs measured: batch-major "
        f"{tb * 1e6:.0f} us, feature-major {tf * 1e6:.0f} us (feature-major below "
        f"{MARGIN:.0%} of batch-major in both rounds: {pick == 'feature'})"
    )


def _blas() -> tuple:
    """The BLAS pools' thread counts now (the key of a decision made with the pool as it is):
    the distinct counts, so a process that has also loaded scipy's OpenBLAS (numba's matmul)
    reads the decision another process made without it."""
    from ..blas import _openblas_libraries

    try:
        return tuple(sorted({get() for _, get in _openblas_libraries()}))
    except Exception:  # noqa: BLE001 (only a cache key)
        return ()


def time_orientations(b: int, k: int, n: int, dtype: np.dtype) -> tuple[float, float]:
    """Best-of seconds of one step's recurrent GEMMs, batch-major (h @ U^T, dz @ U) and
    feature-major (U @ h^T, U^T @ dz^T), the operands laid out as the compiled loop has them."""
    rng = np.random.default_rng(0)
    u = rng.standard_normal((n, k)).astype(dtype)
    h, dz = rng.standard_normal((b, k)).astype(dtype), rng.standard_normal((b, n)).astype(dtype)
    ht, dzt = np.ascontiguousarray(h.T), np.ascontiguousarray(dz.T)
    ob, obk = np.empty((b, n), dtype), np.empty((b, k), dtype)
    of, ofk = np.empty((n, b), dtype), np.empty((k, b), dtype)
    batch = lambda: (np.matmul(h, u.T, out=ob), np.matmul(dz, u, out=obk))
    feature = lambda: (np.matmul(u, ht, out=of), np.matmul(u.T, dzt, out=ofk))
    best = [float("inf"), float("inf")]
    deadline = time.perf_counter() + BUDGET / 2
    for rep in range(7):
        for j, f in enumerate((batch, feature) if rep % 2 == 0 else (feature, batch)):
            start = time.perf_counter()
            f()
            elapsed = time.perf_counter() - start
            k_ = j if rep % 2 == 0 else 1 - j
            best[k_] = min(best[k_], elapsed)
        if rep % 2 == 1 and time.perf_counter() > deadline:  # each timed at least twice
            break
    return best[0], best[1]
