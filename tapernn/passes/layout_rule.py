"""The "auto" layout rule (issue 19): time the whole loop step -- forward and backward loop over
a few steps, compiled by the real pipeline in each layout, transposes and elementwise work
included -- once per (loop body, shapes, dtype, BLAS, backend) and keep the answer for the process
and on disk (FFTW-style planning, wisdom included: passes/layout_cache); tiny GEMMs, and loops
whose GEMMs run packed, stay batch-major without timing. The timer lives in the loops layer
(scan_layout: it builds and compiles a scan) and registers itself here (`set_step_timer`)."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from ..blas import limiter, program_threads
from ..graph import Graph
from . import layout_cache

MIN_FLOPS = 2_000_000  # a recurrent GEMM pair smaller than this is not timed: batch-major
# Feature-major is picked when its whole step takes at most MARGIN of batch-major's (the min of
# interleaved repetitions of each): it holds T*B*4H more bytes (resident +50 %), so a tie or a
# small gain stays batch-major. The GEMM-only rule this replaces picked feature-major where the
# whole step was 18 % slower ((16, 50, 128) f32) and flipped under load at (32, 50, 512)
# (BENCHMARKS.md, hlayout).
MARGIN = 0.95
_DECIDED: dict[tuple, tuple[str, str]] = {}
# (body, n_carry, n_xs, backend) -> [(batch-major s, feature-major s) per interleaved round]
StepTimer = Callable[[Graph, int, int, str], list[tuple[float, float]]]
_TIMER: list[StepTimer] = []


def set_step_timer(fn: StepTimer) -> None:
    """The function timing a loop's whole step in both layouts (scan_layout registers it)."""
    _TIMER[:] = [fn]


def recurrent_gemms(body: Graph, nc: int) -> list[tuple[int, int, int]]:
    """(B, K, N) of each matmul (B, K) @ (K, N) in `body` reading a 2-D carry."""
    carries = {i for i in body.inputs[:nc] if i.ndim == 2}
    out = []
    for n in body.nodes:
        if n.op == "matmul" and n.inputs[0] in carries and n.inputs[1].ndim == 2:
            (b, k), n_ = n.inputs[0].shape, n.inputs[1].shape[1]
            out.append((b, k, n_))
    return out


def body_signature(body: Graph) -> str:
    """A short digest of the body's ops, shapes and dtypes (the cell, not only its GEMMs: an
    LSTM's and a GRU's elementwise work differ)."""
    text = repr([(n.op, n.shape, str(n.dtype)) for n in body.nodes])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def choose(
    body: Graph, nc: int, nx: int = 0, packed: tuple[int, int] | None = None, backend: str = ""
) -> tuple[str, str]:
    """("batch" | "feature", why) for the loop over `body` (`nc` carries, `nx` xs): decided
    once per (body, dtype, BLAS threads, backend) in the process, and kept on disk for later
    processes (layout_cache). `packed`: (min rows, min weight elements) of the step GEMMs the
    program runs packed (numba backend, AVX-512: backends/packed.rule); a loop whose recurrent
    GEMMs all qualify stays batch-major untimed: the packed batch-major GEMMs ran in 0.5-0.9x
    of feature-major OpenBLAS's time (a tie at B = 4-8, H = 128 f32; BENCHMARKS.md, hgemm2),
    and a feature-major loop is not packed."""
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
    if not _TIMER:
        return "batch", "default (no step timer registered)"
    counts = tuple(sorted(Counter(gemms).items()))
    threads = program_threads(max(2 * b * k * n for b, k, n in gemms))  # as the loop runs
    key = (counts, dtype.str, threads, _blas(), backend or "default", body_signature(body))
    if key not in _DECIDED:
        disk = layout_cache.key(counts, dtype.str, key[2:])
        found = layout_cache.lookup(disk)
        if found is not None:
            _DECIDED[key] = (found[0], f"{found[1]}; decided by an earlier process")
        else:
            start = time.perf_counter()
            # at the loop's fixed count, else one thread: under "auto" the programs would
            # alternate counts in their first calls (blas_tuning), and idle pool threads
            # spinning count as CPU time
            try:
                with limiter.limit(1 if threads is None else threads):
                    rounds = _TIMER[0](body, nc, nx, backend)
            except Exception as e:  # noqa: BLE001 (a heuristic never fails a compile)
                _DECIDED[key] = ("batch", f"default (the step timing failed: {e!r:.200})")
                return _DECIDED[key]  # (not on disk: a later process may time it)
            pick, why = decide(rounds)
            shown = ", ".join(
                f"{f'{c} x ' if c > 1 else ''}({b}, {k}) @ ({k}, {n})" for (b, k, n), c in counts
            )
            n = 1 if threads is None else threads
            why = f"{shown} {dtype.name}: {why} at {n} BLAS thread{'s' * (n > 1)} on the {backend or 'default'} backend; deciding took {time.perf_counter() - start:.2f} s"
            _DECIDED[key] = (pick, why)
            layout_cache.store(disk, pick, why)
    return _DECIDED[key]


def decide(rounds: list[tuple[float, float]], margin: float = MARGIN) -> tuple[str, str]:
    """("feature" | "batch", why) from interleaved rounds of (batch-major, feature-major)
    seconds: the min of each layout's rounds (load only adds time), feature-major only when
    it is at most `margin` of batch-major's -- a tie, a small gain or no valid round stays
    batch-major."""
    valid = [(b, f) for b, f in rounds if b > 0 and f > 0 and np.isfinite(b) and np.isfinite(f)]
    if not valid:
        return "batch", "default (the step timing gave no usable round)"
    tb, tf = min(b for b, _ in valid), min(f for _, f in valid)
    pick = "feature" if tf <= margin * tb else "batch"
    return pick, (
        f"whole loop step measured (forward + backward, CPU time, min of {len(valid)} "
        f"interleaved rounds): batch-major {tb * 1e3:.3g} ms, feature-major {tf * 1e3:.3g} ms "
        f"({tf / tb:.2f}x; feature-major needs <= {margin:.2f}x)"
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
