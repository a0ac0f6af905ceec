"""The BLAS thread count of one compiled program under `tn.set_blas_threads("auto")`, measured.

Whether a multi-threaded BLAS helps an RNN's GEMMs depends on the machine's load more than on
the shapes: on an idle 2-core machine a (32, 50, 256) float32 LSTM training step ran in 40 ms
with the pool's 2 OpenBLAS threads and 67 ms with one, while on the same machine with the other
core busy two threads made such steps 4-15x slower (README, "BLAS threads"). No rule on shapes
gets both right, so "auto" times it, as an autotuner does (FFTW's plans, cuDNN's benchmark mode):

- a program whose largest GEMM is below TUNE_MIN_GEMM_FLOPS runs with one thread (OpenBLAS
  itself runs GEMMs under 64^3 on one thread) and is never timed;
- a bigger one, per signature of its arguments (a rolled program serves every length T, and a
  call's time depends on it), alternates one thread and the pool's count for its first
  2 x EXPLORE_CALLS calls after the first (the first call pays first-touch costs), then runs with
  the faster -- the pool's count only when it is at least 1 / MARGIN times faster, since one
  thread leaves the other cores to everything else;
- "faster" is read two ways, the ratio of the medians and the ratio of the best calls (one
  lucky call, one loaded call): when the two disagree about MARGIN the call is close, and the
  first round takes the shape rule's count (`guess`: blas.program_threads) and checks again
  RECHECK_CLOSE calls later, when caches are warm; a close periodic check keeps the count;
- the first round stops early when one count's last two calls each took EARLY times the
  other's slowest (on a busy machine a call with the pool's threads can take 10-30x longer);
  one slow call decides nothing, since a call can also be slow for other reasons (numba's
  switch call waits for its kernels' compile, a burst of load) -- unless the calling thread
  alone spent EARLY times the other's slowest call in CPU (`cpu`), which no wait and no
  queueing for a core can explain: the caller spinning on the pool's threads, whose other core
  is busy (a (32, 50, 256) f32 NumPy-planned step, load 1-4: 1-3.4 s with 2 threads, 1 s of
  it the caller's CPU, vs 0.06-0.13 s with one; BENCHMARKS.md "hearly");
- every `period` calls a check runs RECHECK_CALLS calls with the other count, its older times
  dropped (a first round under a burst of load must not out-vote a quiet check: the shared
  machine gave (32, 50, 256) f32 steps 1.00-1.22x the hand NumPy reference from run to run),
  and the check's calls against the current count's last ones decide; `period` doubles (up
  to RECHECK_MAX) while the choice holds, is at least the other count's slowdown (its best
  recent call) times RECHECK_FIRST (a check costs that many calls), and drops back to
  RECHECK_FIRST when the choice changes, so a settled choice costs at most two calls in
  RECHECK_MAX; and when the last three calls' medians say the other count would now be chosen
  (the other cores got busy, and the pool's threads wait for them), the check starts at the
  next call. `Compiled.blas_threads()` says what was timed and why it chose.

Results do not depend on the count: OpenBLAS splits a GEMM's output between threads, never
its inner sum (tests/test_blas_tuning.py checks bit-identical steps); it does split a
matrix-vector product's (GEMV: a batch of one) and a long dot's, so programs with such a matmul
are not timed (blas.vector_products) and keep one count; with a BLAS that splits GEMMs too, pass
a fixed count (`tn.set_blas_threads(n)`) for bit-reproducible runs."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from .blas import limiter

TUNE_MIN_GEMM_FLOPS = 2.0 * 64**3
EXPLORE_CALLS = 3
RECHECK_FIRST = 32
RECHECK_MAX = 1024
MARGIN = 0.9
EARLY = 2.0  # the first round stops once one count's two calls took EARLY times the other's
KEEP = 5  # the last KEEP times of each count are what the medians read
RECHECK_CALLS = 2  # calls of the other count in a periodic check (its older times dropped)
RECHECK_CLOSE = 8  # a close first round is checked again this many calls later (caches warm)
_clock = time.perf_counter  # (a test replaces it with a clock that depends on the count)
_cpu_clock = time.thread_time  # (the calling thread's CPU: read in the first round only)


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class _Arm:
    """One argument signature's measurements and choice between 1 and `pool` threads."""

    __slots__ = (
        "calls",
        "checking",
        "countdown",
        "cpu",
        "current",
        "explore",
        "fallback",
        "period",
        "pool",
        "switches",
        "times",
        "why",
    )

    def __init__(self, guess: int, pool: int):
        self.pool = pool
        self.current = guess if guess in (1, pool) else 1
        self.fallback = self.current  # the shape rule's count: what a close call runs with
        self.times: dict[int, list[float]] = {1: [], pool: []}
        self.cpu = {1: 0.0, pool: 0.0}  # the caller's most CPU in a first-round call, per count
        self.calls = 0  # calls seen (the first is not timed)
        self.explore = 2 * EXPLORE_CALLS  # calls left in the first, alternating round
        self.checking = 0  # calls of the other count left in a periodic check
        self.period = RECHECK_FIRST
        self.countdown = RECHECK_FIRST
        self.switches = 0
        self.why = "not decided yet"

    def other(self) -> int:
        return self.pool if self.current == 1 else 1

    def next_count(self) -> int:
        """The count the next call runs with."""
        if self.calls == 0:
            return self.current
        if self.explore > 0:
            return self.pool if self.explore % 2 == 0 else 1
        if self.checking > 0 or self.countdown <= 0:
            return self.other()
        return self.current

    def record(self, n: int, seconds: float, cpu: float = 0.0) -> None:
        """A call with `n` threads took `seconds`, `cpu` of them the calling thread's CPU (read
        in the first round; 0.0 unread)."""
        self.calls += 1
        if self.calls == 1:
            return  # first-touch costs: not a measurement
        if self.explore > 0:
            self.cpu[n] = max(self.cpu[n], cpu)
        times = self.times[n]
        if self.explore == 0 and n != self.current and self.checking == 0:
            times.clear()  # a periodic check: the other count's older times are stale
            self.checking = RECHECK_CALLS
        times.append(seconds)
        if len(times) > KEEP:
            del times[0]
        if self.explore > 0:
            self.explore -= 1
            if self.explore == 0 or self._clearly_slower():
                self.explore = 0  # (a count EARLY times slower twice needs no more calls)
                self._decide(EXPLORE_CALLS, first=True)
            return
        if n != self.current:  # the periodic check of the other count
            self.checking -= 1
            mine = self.times[self.current]
            if self.checking > 0 and mine and seconds > EARLY * max(mine[-RECHECK_CALLS:]):
                self.checking = 0  # (much slower: keeping the current count needs no more)
            if self.checking == 0:
                self._decide(RECHECK_CALLS)
        else:
            self.countdown -= 1
            if len(times) >= 3 and self._medians() != self.current:
                self.countdown = 0  # the current count's calls got slower: check the other

    def _clearly_slower(self) -> bool:
        """Both of one count's last two calls took EARLY times the other's slowest: one slow
        call proves nothing (a first-touch, a kernel compile waited for, a burst of load) --
        but one whose calling thread alone spent that long on a CPU does."""
        for slow, fast in ((1, self.pool), (self.pool, 1)):
            took, other = self.times[slow], self.times[fast]
            if other and self.cpu[slow] > EARLY * max(other):
                return True
            if len(took) >= 2 and other and min(took[-2:]) > EARLY * max(other):
                return True
        return False

    def _medians(self) -> int:
        """The count the medians of the last three calls of each favour (MARGIN)."""
        one, pool = self.times[1], self.times[self.pool]
        if not one or not pool:
            return self.current
        return self.pool if _median(pool[-3:]) < MARGIN * _median(one[-3:]) else 1

    def _verdict(self, k: int) -> tuple[int | None, float, float]:
        """(the count both readings of the last `k` calls of each favour, or None when they
        disagree: a close call; the pool/one ratio of their medians, of their best calls)."""
        one, pool = self.times[1][-k:], self.times[self.pool][-k:]
        if not one or not pool:
            return None, float("nan"), float("nan")
        med = _median(pool) / max(_median(one), 1e-12)
        best = min(pool) / max(min(one), 1e-12)
        if max(med, best) < MARGIN:
            return self.pool, med, best
        if min(med, best) >= MARGIN:
            return 1, med, best
        return None, med, best

    def _decide(self, k: int, first: bool = False) -> None:
        best, med, low = self._verdict(k)
        what = "first round" if first else "check"
        close = best is None
        if close:  # close: the shape rule's count first, the current one at a check
            best = self.fallback if first else self.current
            self.why = (
                f"{what}: close call (pool/one medians {med:.2f}x, best calls {low:.2f}x; "
                f"{self.pool} threads need both < {MARGIN:.2f}x): "
                + ("the shape rule's count" if first else "kept")
            )
        else:
            self.why = f"{what}: pool/one medians {med:.2f}x, best calls {low:.2f}x"
        if best != self.current:
            self.current, self.period = best, RECHECK_FIRST
            self.switches += 1
        else:
            self.period = min(2 * self.period, RECHECK_MAX)
        # a check of a much slower count costs that many calls: space the checks to match
        mine, other = self.times[self.current], self.times[self.other()]
        if mine and other:  # (the other count's best call: one slow call does not space them)
            ratio = min(other[-3:]) / max(_median(mine[-3:]), 1e-9)
            self.period = max(self.period, min(RECHECK_MAX, int(ratio * RECHECK_FIRST)))
        self.countdown = self.period
        if first and close:
            self.countdown = RECHECK_CLOSE  # checked again soon, with caches warm

    def describe(self) -> str:
        def ms(n: int) -> str:
            t = self.times[n]
            return f"{_median(t[-3:]) * 1e3:.3g} ms" if t else "not timed"

        return (
            f"{self.current} thread{'s' if self.current > 1 else ''} "
            f"(1: {ms(1)}, {self.pool}: {ms(self.pool)}; {self.calls} calls, "
            f"{self.switches} switches, next check in {max(self.countdown, 0)}; {self.why})"
        )


class _Paused(threading.local):
    depth = 0


_paused = _Paused()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Timed programs called inside run as the enclosing limit says and record nothing (the
    layout re-check times two programs alike at one thread: nn/layout_recheck)."""
    _paused.depth += 1
    try:
        yield
    finally:
        _paused.depth -= 1


class ThreadChoice:
    """The thread count of one program's calls under "auto": `guess` (the shape rule's count,
    None = the pool's) for programs too small to time, else measured per argument signature.
    `run(fn, args, pool)` calls fn(args) with the count its argument signature's arm picks."""

    __slots__ = ("_arms", "guess", "tunable", "untimed")

    def __init__(self, largest_gemm_flops: float, guess: int | None, vector_products: bool = False):
        # a matrix-vector product (GEMV) is not timed: OpenBLAS splits its inner sums between
        # threads (float32 (1, 1000) @ (1000, 1000): the last bits differ with 1 and 2 threads),
        # so alternating counts would make one program's calls differ (blas.vector_products)
        self.tunable = largest_gemm_flops >= TUNE_MIN_GEMM_FLOPS and not vector_products
        self.untimed = (
            "not timed: a matrix-vector product, whose bits depend on the thread count"
            if vector_products and largest_gemm_flops >= TUNE_MIN_GEMM_FLOPS
            else "1 thread (GEMMs too small to time)"
        )
        self.guess = guess
        self._arms: dict[tuple, _Arm] = {}  # (no lock: a module's deep copy copies this)

    def arm(self, args: Any, pool: int) -> _Arm:
        key = (pool, *(getattr(a, "shape", None) for a in args))
        arm = self._arms.get(key)
        if arm is None:  # (setdefault: one arm per key when threads race here)
            arm = self._arms.setdefault(key, _Arm(pool if self.guess is None else 1, pool))
        return arm

    def run(self, fn: Any, args: Any, pool: int) -> Any:
        """fn(args) with the BLAS thread count the arm of `args`' signature picks (1 or
        `pool`), its wall time recorded there (not when it raises; nor when `paused`)."""
        if _paused.depth:
            return fn(args)
        arm = self.arm(args, pool)
        n = arm.next_count()
        exploring = arm.explore > 0
        limiter.enter(n)
        try:
            start, cpu = _clock(), _cpu_clock() if exploring else 0.0
            out = fn(args)
            seconds = _clock() - start
            if exploring:
                cpu = _cpu_clock() - cpu
        finally:
            limiter.exit()
        arm.record(n, seconds, cpu)
        return out

    def describe(self) -> str:
        """One line per argument signature timed so far (what `Compiled.blas_threads()` shows)."""
        if not self.tunable:
            return self.untimed
        if not self._arms:
            return "not called yet"
        return "\n".join(arm.describe() for arm in self._arms.values())
