"""The arithmetic bound under every row of a benchmark table: the machine's GEMM peak (a large
square GEMM at the thread count the table runs with, best of NumPy's BLAS and torch's), what
fraction of it each contender reaches, and the fastest a step of that many FLOPs could be --
as a ratio to torch's median. A target under that ratio needs fewer FLOPs, not a faster kernel.
"""

from __future__ import annotations

import functools
import statistics
import time

import numpy as np

from .timing import PEER_REST_S, Contender

# square GEMMs a cache-blocked BLAS runs at full rate; the largest read highest on the Zen 4
# VM (f32, two threads: 1024^3 192-204, 2048^3 199-207, 3072^3 209 GF/s): a peak read low would
# make the bound below claim too little is possible
PEAK_SIZES = (1024, 2048, 3072)
PEAK_REPS = 5


def _best_rate(gemm, n: int) -> float:
    gemm()  # (warm: BLAS pools, page faults of the output)
    best = min(_timed(gemm) for _ in range(PEAK_REPS))
    return 2.0 * n**3 / best


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


@functools.cache
def gemm_peak(dtype_name: str, torch_threads: int | None = None) -> tuple[float, str]:
    """(FLOP/s, which library and size) of the fastest large square GEMM measured here: NumPy's
    matmul at its current BLAS threads, and torch.mm at `torch_threads` when given (None: torch
    is not timed). Cached per run: measured once per dtype (~1-2 s)."""
    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(0)
    best = (0.0, "")
    for n in PEAK_SIZES:
        a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
        out = np.empty_like(a)
        rate = _best_rate(functools.partial(np.matmul, a, b, out=out), n)
        best = max(best, (rate, f"numpy matmul {n}^3"))
        if torch_threads is not None:
            best = max(best, _torch_rate(a, b, out, n, torch_threads))
    return best


def _torch_rate(a, b, out, n: int, threads: int) -> tuple[float, str]:
    try:
        import torch
    except ImportError:
        return (0.0, "")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        time.sleep(PEER_REST_S)  # (NumPy's BLAS workers spin after their last call)
        ta, tb, tout = (torch.from_numpy(v) for v in (a, b, out))
        rate = _best_rate(functools.partial(torch.mm, ta, tb, out=tout), n)
        time.sleep(PEER_REST_S)
    finally:
        torch.set_num_threads(before)
    return (rate, f"torch.mm {n}^3")


def roofline_lines(contenders: list[Contender], dtype, kind: str = "times") -> list[str]:
    """The peak line, each timed contender's share of it, and the bound as a ratio to the
    fastest torch row (if any): (FLOPs / peak) / torch's median."""
    timed = [c for c in contenders if getattr(c, kind) and c.flops]
    if not timed:
        return []
    torch_threads = None
    if any(c.peer for c in timed):
        try:
            import torch

            torch_threads = torch.get_num_threads()
        except ImportError:
            pass
    peak, where = gemm_peak(np.dtype(dtype).name, torch_threads)
    median = lambda c: statistics.median(getattr(c, kind))
    shares = ", ".join(f"{c.name} {c.flops / median(c) / peak:.0%}" for c in timed)
    lines = [
        (
            f"  roofline: GEMM peak here {peak / 1e9:.1f} GFLOP/s ({where}, best of "
            f"{PEAK_REPS}); share of it: {shares}"
        )
    ]
    peers = [c for c in timed if c.peer]
    if peers:
        fastest = min(peers, key=median)
        bound = timed[0].flops / peak
        lines.append(
            f"  bound: this step's {timed[0].flops / 1e9:.3f} GFLOP at that peak take "
            f"{bound * 1e3:.3f} ms = {bound / median(fastest):.3f}x {fastest.name} with no "
            "other work: no implementation of these FLOPs beats this ratio here"
        )
    return lines
