"""The "auto" layout rule (issue 19): feature-major only when the whole loop step -- forward and
backward loop over a few steps, compiled by the real pipeline in each layout, transposes and
elementwise work included -- is measured clearly faster; the trial runs only when the recurrent
GEMMs alone, timed first (cheap: no compile), favour feature-major by a wide margin (PREFILTER),
since the rest of the step only adds to feature-major's cost. Decided once per (loop body,
shapes, dtype, BLAS, backend) and kept for the process and on disk (FFTW-style planning, wisdom
included: passes/layout_cache); tiny GEMMs, and loops whose GEMMs run packed, stay batch-major
without timing. The step timer lives in the loops layer (scan_layout: it builds and compiles a
scan) and registers itself here (`set_step_timer`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator

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
# A trial is read two ways: the ratio of each layout's best round (min: load only adds time)
# and the median of the per-round ratios (one lucky round does not decide). A pick is clear
# only when both lie CLOSE beyond MARGIN on the same side: feature-major at <= MARGIN - CLOSE,
# batch-major at >= MARGIN + CLOSE. Otherwise (the two disagree, or either is near MARGIN) the
# decision is close: the measured shape rule decides (FALLBACK), and the nn runtime re-checks
# it on the real programs a few steps in (nn/layout_recheck). (4, 50, 256) f32's trial read
# 0.90-0.98 where the whole T = 50 step is 1.22x feature-major (BENCHMARKS.md, hlayout2).
CLOSE = 0.1
# Rounds that scatter cannot be read to CLOSE: each layout's median round must lie within NOISE
# of its best (CPU time: other processes' load adds little, but a shared core's caches, a page
# fault or a GC pass in one round do). Otherwise no decision: batch-major, not kept on disk (a
# later process times again); scan_layout runs more rounds first.
NOISE = 1.2
# The measured shape rule of a close trial: batch-major. Every whole training step measured
# (B 4-32, H 96-512, T = 50, f32 and f64, Zen 4 and Skylake-X) ran 1.02-1.33x slower
# feature-major (BENCHMARKS.md, hlayout and hlayout2).
FALLBACK = "batch"
# The whole-step trial (0.05-2 s: two compiles) runs only when the recurrent GEMMs alone take at
# most PREFILTER of batch-major's time feature-major; otherwise batch-major untried. The rest of
# the step (weight gradients, input projection, transposes at the loop's edges) costs
# feature-major more, not less: GEMMs at 0.44-0.77x were whole T = 50 steps at 1.02-1.33x
# (f32 and f64, B = 8-32, H = 96-512; BENCHMARKS.md, hlayout2).
PREFILTER = 0.7
GEMM_BUDGET = 0.05  # seconds of GEMM timing per shape, roughly
# "0" (or "off"): "auto" times nothing and takes the measured shape rule (FALLBACK) where it
# would time -- one answer on every machine and under any load (the test suite runs so)
TRIAL_ENV = "TAPERNN_LAYOUT_TRIAL"
_DECIDED: dict[tuple, tuple[str, str]] = {}
# decision keys whose pick the nn runtime should confirm on the real programs (a close trial)
_RECHECK: set[tuple] = set()
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
    body: Graph,
    nc: int,
    nx: int = 0,
    packed: tuple[int, int] | None = None,
    backend: str = "",
    recheck: list | None = None,
) -> tuple[str, str]:
    """("batch" | "feature", why) for the loop over `body` (`nc` carries, `nx` xs): decided
    once per (body, dtype, BLAS threads, backend) in the process, and kept on disk for later
    processes (layout_cache). `packed`: (min rows, min weight elements) of the step GEMMs the
    program runs packed (numba backend, AVX-512 or AVX2: backends/packed.rule); a loop whose recurrent
    GEMMs all qualify stays batch-major untimed: the packed batch-major GEMMs ran in 0.5-0.9x
    of feature-major OpenBLAS's time (a tie at B = 4-8, H = 128 f32; BENCHMARKS.md, hgemm2),
    and a feature-major loop is not packed. `recheck`: the decision's key is appended when the
    nn runtime should confirm the pick on the real programs (`_RECHECK`; `settle`)."""
    gemms = recurrent_gemms(body, nc)
    dtype = np.dtype(body.outputs[0].dtype if body.outputs else np.float64)
    if not gemms:
        return "batch", "no recurrent GEMM on a 2-D carry"
    if (
        packed is not None
        and dtype in (np.float32, np.float64)
        and all(b >= packed[0] and k * n >= packed[1] for b, k, n in gemms)
    ):
        return "batch", "its recurrent GEMMs run packed (numba): not timed"
    flops = sum(4 * b * k * n for b, k, n in gemms)  # forward and backward products
    if flops < MIN_FLOPS:
        return "batch", f"recurrent GEMMs of {flops} flops: too small to time"
    if not _TIMER:
        return "batch", "default (no step timer registered)"
    if os.environ.get(TRIAL_ENV, "1").strip().lower() in ("0", "off"):
        return FALLBACK, f"the measured shape rule, {FALLBACK}-major: not timed (${TRIAL_ENV}=0)"
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
            pick, why, confirm = _measure(body, nc, nx, backend, counts, dtype, threads)
            failed = why.startswith("default")  # (not on disk: a later process may time it)
            shown = ", ".join(
                f"{f'{c} x ' if c > 1 else ''}({b}, {k}) @ ({k}, {n})" for (b, k, n), c in counts
            )
            n = 1 if threads is None else threads
            why = f"{shown} {dtype.name}: {why} at {n} BLAS thread{'s' * (n > 1)} on the {backend or 'default'} backend; deciding took {time.perf_counter() - start:.2f} s"
            _DECIDED[key] = (pick, why)
            if confirm:
                _RECHECK.add(key)  # (on disk once settled: a later process re-times it)
            elif not failed:
                layout_cache.store(disk, pick, why)
    if recheck is not None and key in _RECHECK:
        recheck.append(key)
    return _DECIDED[key]


def flipped(keys: list[tuple]) -> dict[tuple, tuple[str, str]]:
    """The decisions of `keys` with the other pick (what the runtime's re-check compiles)."""
    return {
        k: ("batch" if _DECIDED[k][0] == "feature" else "feature", "re-check: the other layout")
        for k in keys
    }


@contextlib.contextmanager
def override(decisions: dict[tuple, tuple[str, str]]) -> Iterator[None]:
    """A context in which `decisions` replace the kept ones (the re-check's second compile)."""
    saved = {k: _DECIDED.get(k) for k in decisions}
    _DECIDED.update(decisions)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                _DECIDED.pop(k, None)
            else:
                _DECIDED[k] = v


def settle(keys: list[tuple], pick: str, note: str) -> None:
    """The re-check's outcome: `keys` decided as `pick` for good (no further re-check in this
    process; kept on disk for later ones)."""
    for k in keys:
        if k not in _RECHECK:
            continue
        _RECHECK.discard(k)
        old = _DECIDED[k][1]
        _DECIDED[k] = (pick, f"{old}; {note}")
        counts, dtype = k[0], k[1]
        layout_cache.store(layout_cache.key(counts, dtype, k[2:]), *_DECIDED[k])


def _measure(body, nc, nx, backend, counts, dtype, threads) -> tuple[str, str, bool]:
    """The recurrent GEMMs' pre-filter, then (only when it favours feature-major) the whole-step
    trial; at the loop's fixed BLAS thread count, else one thread: under "auto" the programs
    would alternate counts in their first calls (blas_tuning), and idle pool threads spinning
    count as CPU time. A timing that raises leaves the loop batch-major ("default (...)").
    The flag: the real programs should confirm the pick (a close trial)."""
    try:
        with limiter.limit(1 if threads is None else threads):
            tb, tf = gemm_times(counts, dtype, threads is None)
            gemms = (
                f"recurrent GEMMs alone {tf / tb:.2f}x feature-major/batch-major "
                f"({tb * 1e6:.0f} / {tf * 1e6:.0f} us)"
            )
            if not tf <= PREFILTER * tb:
                return (
                    "batch",
                    f"{gemms}, the whole-step trial runs only at <= {PREFILTER:.2f}x",
                    False,
                )
            rounds = _TIMER[0](body, nc, nx, backend)
    except Exception as e:  # noqa: BLE001 (a heuristic never fails a compile)
        return "batch", f"default (the timing failed: {e!r:.200})", False
    pick, why, close = judge(rounds)
    if why.startswith("default"):  # (no decision: choose keeps it off the disk)
        return pick, f"{why}; {gemms}", close
    return pick, f"{gemms}; {why}", close


def gemm_times(counts: tuple, dtype: np.dtype, one_thread: bool = True) -> tuple[float, float]:
    """Seconds (batch-major, feature-major) of one step's recurrent GEMMs, each distinct one
    weighted by its count: two rounds (each a best-of), the one less favourable to feature-major
    kept, so a load spike on batch-major's side must hit both rounds to start the trial (a
    trial started for nothing costs up to a few seconds; one skipped at 0.70-0.77x lost nothing
    measured). Timed in this thread's CPU time when BLAS runs on one thread (a numba compile in
    the background adds nothing), else in wall time."""
    clock = time.thread_time if one_thread else time.perf_counter
    rounds = []
    for _ in range(2):
        times = [(c, time_orientations(b, k, n, dtype, clock)) for (b, k, n), c in counts]
        rounds.append((sum(c * t[0] for c, t in times), sum(c * t[1] for c, t in times)))
    return max(rounds, key=lambda r: r[1] / max(r[0], 1e-12))


def time_orientations(
    b: int, k: int, n: int, dtype: np.dtype, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float]:
    """Best-of seconds of one step's recurrent GEMMs, batch-major (h @ U^T, dz @ U) and
    feature-major (U @ h^T, U^T @ dz^T), the operands laid out as the compiled loop has them
    (interleaved, the order alternating; each timed at least twice, up to 7 times)."""
    rng = np.random.default_rng(0)
    u = rng.standard_normal((n, k)).astype(dtype)
    h, dz = rng.standard_normal((b, k)).astype(dtype), rng.standard_normal((b, n)).astype(dtype)
    ht, dzt = np.ascontiguousarray(h.T), np.ascontiguousarray(dz.T)
    ob, obk = np.empty((b, n), dtype), np.empty((b, k), dtype)
    of, ofk = np.empty((n, b), dtype), np.empty((k, b), dtype)
    batch = lambda: (np.matmul(h, u.T, out=ob), np.matmul(dz, u, out=obk))
    feature = lambda: (np.matmul(u, ht, out=of), np.matmul(u.T, dzt, out=ofk))
    best = [float("inf"), float("inf")]
    deadline = time.perf_counter() + GEMM_BUDGET / 4  # (two rounds of both layouts)
    for rep in range(7):
        for j in (0, 1) if rep % 2 == 0 else (1, 0):
            start = clock()
            (batch, feature)[j]()
            best[j] = min(best[j], clock() - start)
        if rep % 2 == 1 and time.perf_counter() > deadline:
            break
    return best[0], best[1]


def decide(
    rounds: list[tuple[float, float]], margin: float = MARGIN, close: float = CLOSE
) -> tuple[str, str]:
    """judge's pick and why."""
    return judge(rounds, margin, close)[:2]


def judge(
    rounds: list[tuple[float, float]], margin: float = MARGIN, close: float = CLOSE
) -> tuple[str, str, bool]:
    """("feature" | "batch", why) from interleaved rounds of (batch-major, feature-major)
    seconds, read two ways: the ratio of each layout's best round (load only adds time) and
    the median of the rounds' ratios. Clear only when both are `close` beyond `margin` on one
    side (feature-major at <= margin - close, batch-major at >= margin + close); otherwise a
    close call, which the measured shape rule (FALLBACK) decides. No valid round, or noisy
    rounds (a layout's median round over NOISE times its best): batch-major, "default (...)"
    (no decision). The flag: a close call."""
    valid = _valid(rounds)
    if not valid:
        return "batch", "default (the step timing gave no usable round)", False
    spread = _spreads(valid)
    if max(spread) > NOISE:
        why = (
            f"default (a noisy trial: each layout's median round over its best, batch-major "
            f"{spread[0]:.2f}x, feature-major {spread[1]:.2f}x in {len(valid)} rounds; decided "
            f"at <= {NOISE:.2f}x)"
        )
        return "batch", why, False
    tb, tf = min(b for b, _ in valid), min(f for _, f in valid)
    best, median = tf / tb, float(np.median([f / b for b, f in valid]))
    tight = False
    if max(best, median) <= margin - close:
        pick, how = "feature", f"feature-major clearly faster (both <= {margin - close:.2f}x)"
    elif min(best, median) >= margin + close:
        pick, how = "batch", f"batch-major clearly faster (both >= {margin + close:.2f}x)"
    else:
        pick, tight = FALLBACK, True
        how = (
            f"a close call (clear at <= {margin - close:.2f}x or >= {margin + close:.2f}x): "
            f"the measured shape rule, {FALLBACK}-major"
        )
    why = (
        f"whole loop step measured (forward + backward, CPU time, {len(valid)} interleaved "
        f"rounds): batch-major {tb * 1e3:.3g} ms, feature-major {tf * 1e3:.3g} ms at best "
        f"({best:.2f}x), median of the rounds' ratios {median:.2f}x; {how}"
    )
    return pick, why, tight


def noisy(rounds: list[tuple[float, float]]) -> bool:
    """Whether judge would refuse `rounds` as noisy (a layout's median round over NOISE times
    its best)."""
    valid = _valid(rounds)
    return bool(valid) and max(_spreads(valid)) > NOISE


def _valid(rounds: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b, f) for b, f in rounds if b > 0 and f > 0 and np.isfinite(b) and np.isfinite(f)]


def _spreads(valid: list[tuple[float, float]]) -> tuple[float, float]:
    """Each layout's median round over its best."""
    b, f = np.array(valid).T
    return float(np.median(b) / b.min()), float(np.median(f) / f.min())


def _blas() -> tuple:
    """The BLAS pools' thread counts now (the key of a decision made with the pool as it is):
    the distinct counts, so a process that has also loaded scipy's OpenBLAS (numba's matmul)
    reads the decision another process made without it."""
    from ..blas import _openblas_libraries

    try:
        return tuple(sorted({get() for _, get in _openblas_libraries()}))
    except Exception:  # noqa: BLE001 (only a cache key)
        return ()
