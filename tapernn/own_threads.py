"""tapernn owns the parallelism of a program call (issue 19, PlanOptions.own_threads): OpenBLAS
runs ONE thread for the call (no pool spinning after each GEMM on the core the other half
needs; the caller's BLAS setting is restored after, also after an exception), and one
persistent worker thread (a 1-thread executor blocked on its queue between calls: nothing
spins) takes half of every large piece of work -- the rolled loops' batch rows (scan_split.py)
and the time-batched GEMMs (`matmul`: rows of the larger side, or columns) -- each half written
into its own slice of the same output, so nothing is summed in a thread-dependent order: the
bits are fixed for a configuration (they may differ from the unsplit program's: OpenBLAS's
kernels may round a row or column block differently by its size).

The rule ("auto", in the compile report): the program has a loop that splits its rows (the
batch split's own rule: >= 8 rows a half, every step GEMM packed), and per call: >= 2 CPUs in
os.sched_getaffinity and a BLAS thread policy that allows two threads (tn.set_blas_threads
"auto" -- unless OPENBLAS_NUM_THREADS & co. ask for one -- or an int >= 2; never at
set_blas_threads(1) or None)."""

from __future__ import annotations

import contextvars
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from . import blas, blas_gemm
from .backends import blas_twin
from .launch import cpus

# a time-batched GEMM splits from this many flops (2mkn): the hand-off to the worker and back
# costs ~20-50 us, a 8 MFLOP GEMM ~80 us a thread
MIN_FLOPS = 8e6
# ... or from this many bytes of output, whatever its flops: a GEMM of small K writes at memory's
# rate (a FastLSTM(1, 256) projection (1600, 1) x (1, 1024) f32: 6.5 MB, 1.95 ms at one
# OpenBLAS thread, 0.99 ms a row half; BENCHMARKS.md "hgemm")
MIN_OUT_BYTES = 1 << 20
SPLIT_GEMMS = [0]  # GEMMs run split so far (tests: the split ran)

# ---- the worker (shared with the loops' batch split) -------------------------------------------

_pool: list[ThreadPoolExecutor | None] = [None]
_pool_lock = threading.Lock()
worker_ident: set[int] = set()


def executor() -> ThreadPoolExecutor:
    with _pool_lock:
        if _pool[0] is None:
            _pool[0] = ThreadPoolExecutor(1, "tapernn-split", initializer=_mark)
        return _pool[0]


def _mark() -> None:
    worker_ident.add(threading.get_ident())


def _after_fork() -> None:
    _pool[0] = None
    worker_ident.clear()


os.register_at_fork(after_in_child=_after_fork)


# ---- the hand-off: the caller's join spins a little before it blocks ------------------------

# the caller waits for the worker's half spinning (nogil, backends/numba_spin) this long at most
# before it blocks on the future (`submit`): on this VM (guest halt polling off) a vCPU whose
# thread blocks halts, and its wake-up comes late through the host. Off (0: the plain future, as
# before): at (32, 50, 256) / (32, 50, 512) f32, 2 ms gave 0.93-0.98x the blocking step's wall
# at load 11-18 but 0.99-1.00x at load 10.5, the caller's CPU +2-7 %; not measured quiet
# (BENCHMARKS.md "h256G"; tools/ab_spin.py). Numba only (a NumPy-only process blocks), once
# its kernel is loaded by the background worker.
JOIN_SPIN_S = 0.0
JOINS = [0, 0]  # (joins that found the half ended, after a spin or at once; joins that blocked)


class _Spin:
    """backends/numba_spin.wait, loaded (or compiled) by the background worker (prepare), and
    its reads a second (`rate`, measured there): `fn` once ready, `error` if it failed (then
    every join blocks at once, for good)."""

    fn: Any = None
    rate = 0.0
    error: BaseException | None = None
    asked = False

    def prepare(self, key: tuple) -> None:
        try:
            from .backends.numba_setup import setup

            setup()
            from .backends import numba_spin
            from .backends.background import loaded

            done, idle = np.ones(1, np.int64), np.zeros(1, np.int64)
            fn = loaded(numba_spin.wait, done, 1, nogil=True)
            if not fn(done, 0) or fn(idle, 100):
                raise RuntimeError("numba_spin.wait misread its flag")
            t = time.perf_counter()
            fn(idle, 20000)
            self.rate = 20000 / max(time.perf_counter() - t, 1e-9)
            self.fn = fn
        except Exception as e:  # noqa: BLE001 -- blocking joins then, for good
            self.error = e


SPIN = _Spin()


def _spinner() -> _Spin | None:
    """SPIN once loaded, else None; asks the background worker for it the first time numba is
    (fully) imported in this process -- a NumPy-only process never imports it."""
    if SPIN.fn is not None or SPIN.asked:
        return SPIN if SPIN.fn is not None else None
    from .backends import background

    if not background.numba_imported():
        return None

    SPIN.asked = True
    background.request(SPIN, ())
    return None


class Pending:
    """The worker's half of a split (`submit`): `result()` its value, or its exception raised."""

    __slots__ = ("exc", "flag", "future", "value")

    def __init__(self) -> None:
        self.flag = np.zeros(1, np.int64)
        self.value: Any = None
        self.exc: BaseException | None = None

    def run(self, fn, args) -> None:  # (on the worker)
        try:
            self.value = fn(*args)
        except BaseException as e:  # noqa: BLE001 -- raised again by result(), on the caller
            self.exc = e
        finally:
            self.flag[0] = 1  # (last: value and exc are set when the caller sees it)

    def result(self) -> Any:
        """The half's value once it has ended: a spin of JOIN_SPIN_S at most (numba), then the
        future's blocking wait."""
        if not self.flag[0]:
            spin = _spinner()
            if spin is not None and spin.fn(self.flag, int(JOIN_SPIN_S * spin.rate)):
                JOINS[0] += 1
            else:
                self.future.result()
                JOINS[1] += 1
        else:
            JOINS[0] += 1
        self.future = None
        if self.exc is not None:
            exc, self.exc = self.exc, None
            raise exc
        return self.value


def submit(fn, *args) -> Any:
    """fn(*args) on the split's worker (`executor`) in a copy of the caller's context -- NumPy's
    error state a program runs in (warnings off, a user's np.errstate "raise" kept) --: its
    future, or with JOIN_SPIN_S a Pending (both joined by .result())."""
    run = contextvars.copy_context().run
    if JOIN_SPIN_S <= 0:  # (off: the plain future)
        return executor().submit(run, fn, *args)
    pending = Pending()
    pending.future = executor().submit(run, pending.run, fn, args)
    return pending


def both_after(prepare: tuple, work: tuple) -> tuple:
    """(work[0](), work[1]()): side k runs prepare[k]() then work[k]() -- side 0 on the caller,
    side 1 on the worker (`submit`) -- each work starting once both prepares are done (a
    Barrier: the two halves of a weight's panels, each side packing one, before either reads
    them: own_room's projection, split_pack's loop halves). A prepare that raises runs neither
    work; any error is raised here once both sides have ended (the worker's when it broke the
    barrier the caller waited at)."""
    barrier = threading.Barrier(2)

    def side(k):
        try:
            prepare[k]()
        except BaseException:
            barrier.abort()
            raise
        barrier.wait()
        return work[k]()

    future = submit(side, 1)
    try:
        value = side(0)
    except BaseException as e:
        barrier.abort()
        try:
            future.result()  # (the worker's side ends before the error leaves)
        except BaseException as w:
            if isinstance(e, threading.BrokenBarrierError):  # (the worker's error broke it)
                raise w from None
        raise
    return value, future.result()


# ---- the owned call ----------------------------------------------------------------------------


class _State(threading.local):
    depth = 0


_state = _State()


def owning() -> bool:
    """Whether this thread is inside an owned program call."""
    return _state.depth > 0


def allowed() -> bool:
    """The per-call part of the rule: >= 2 CPUs, and a BLAS policy that allows two threads."""
    if cpus() < 2:
        return False
    policy = blas._policy
    if policy == "auto":
        return not blas._user_set_threads() or blas.limiter.pool_count() >= 2
    return isinstance(policy, int) and policy >= 2


def idle_worker() -> bool:
    """Whether this thread may hand the worker a job outside an owned call: the worker exists
    (an owned call made it: no thread is started for this), `allowed`, not on the worker."""
    return _pool[0] is not None and threading.get_ident() not in worker_ident and allowed()


def splitting(runners: tuple) -> bool:
    """Whether a loop of the program still splits (a split that failed -- its halves would not
    compile alike -- runs the whole loop: then owning the call would only cost BLAS threads)."""
    return any(not r.failed for r in runners)


def run(fn, args):
    """fn(args) as an owned call: BLAS at one thread, the split paths on (restored after)."""
    blas.limiter.enter(1)
    _state.depth += 1
    try:
        return fn(args)
    finally:
        _state.depth -= 1
        blas.limiter.exit()


def matmul(a, b, out=None):
    """np.matmul; inside an owned call a 2-D GEMM of >= MIN_FLOPS (or >= MIN_OUT_BYTES of
    output) runs in two halves at once (the caller's thread and the worker), split along the
    larger of its output's sides (rows of a, or columns of b), each half written into its own
    slice of `out`."""
    if _state.depth and threading.get_ident() not in worker_ident:
        done = _split(a, b, out, _mm_half)
        if done is not None:
            return done
    return np.matmul(a, b, out=out)


def _split(a, b, out, half):
    """`half(a part, b part, out part, column slice, k)` (k: 0 here, 1 on the worker) at once
    for the two halves of out = a @ b (2-D; rows of a, or columns of b; out None: made here):
    out, or None (nothing run) when the GEMM is too small or out does not fit."""
    if getattr(a, "ndim", 0) != 2 or getattr(b, "ndim", 0) != 2:
        return None
    m, k = a.shape
    k2, n = b.shape
    if k != k2 or max(m, n) < 2:
        return None
    if 2.0 * m * k * n < MIN_FLOPS and m * n * np.result_type(a, b).itemsize < MIN_OUT_BYTES:
        return None
    if out is None:
        out = np.empty((m, n), np.result_type(a.dtype, b.dtype))
    elif out.shape != (m, n) or np.may_share_memory(out, a) or np.may_share_memory(out, b):
        # (one half's output must not be the other half's input: np.matmul alone buffers)
        return None
    if m >= n:
        h = m - m // 2
        every = slice(None)
        parts = ((a[:h], b, out[:h], every, 0), (a[h:], b, out[h:], every, 1))
    else:
        h = n - n // 2
        parts = (
            (a, b[:, :h], out[:, :h], slice(0, h), 0),
            (a, b[:, h:], out[:, h:], slice(h, n), 1),
        )
    future = submit(half, *parts[1])
    try:
        half(*parts[0])
    finally:
        future.result()
    SPLIT_GEMMS[0] += 1
    return out


# memory passes (zero-fills) shared by the two threads from this many bytes in all (`in_two`):
# off -- at (32, 50, 512) f32, load 12, the lent panels' zero-fill took 1.38 ms a step on two
# threads against 0.75 on one, the tap's copies 1.71 against 1.66 (those now always on the
# caller: state_grads.tap_copies, a hot path; BENCHMARKS.md "h512b"); a quiet machine is not
# measured: tools/ab_serial.py --arms old two
TWO_MIN_BYTES = 1 << 62
TWO_CALLS = [0]  # in_two calls that used the worker so far (tests: it ran)


def in_two(jobs: list, owned: bool = True) -> None:
    """Runs `jobs` ((no-argument callable, its bytes) each: passes over memory that write
    apart); when they hold >= TWO_MIN_BYTES, on the caller's thread and the worker at once,
    split by bytes -- inside an owned call (`owned`), or in any call on a machine and BLAS
    policy that allow two threads (`allowed`: e.g. after a program, outside its owned call).
    Which thread runs a job never changes what it writes."""
    if (
        sum(n for _, n in jobs) < TWO_MIN_BYTES
        or not (_state.depth if owned else allowed())
        or threading.get_ident() in worker_ident
    ):
        for fn, _ in jobs:
            fn()
        return
    mine: list = []
    theirs: list = []
    loads = [0, 0]
    for fn, n in sorted(jobs, key=lambda j: -j[1]):  # (largest first, to the lighter side)
        side = 0 if loads[0] <= loads[1] else 1
        (mine, theirs)[side].append(fn)
        loads[side] += n
    future = submit(_each, theirs)
    try:
        _each(mine)
    finally:
        future.result()
    TWO_CALLS[0] += 1


def _each(fns: list) -> None:
    for fn in fns:
        fn()


def zero_fill(arrays: list) -> None:
    """a.fill(0) for each of `arrays`; inside an owned call (in_two) the C-contiguous ones in
    two halves, on the two threads at once."""
    if sum(a.nbytes for a in arrays) < TWO_MIN_BYTES:  # (in_two's caller-alone case: whole)
        for a in arrays:
            a.fill(0)
        return
    jobs = []
    for a in arrays:
        if a.flags.c_contiguous and a.size > 1:
            flat = a.reshape(-1)
            for part in (flat[: flat.size // 2], flat[flat.size // 2 :]):
                jobs.append((partial(part.fill, 0), part.nbytes))
        else:
            jobs.append((partial(a.fill, 0), a.nbytes))
    in_two(jobs)


def _mm(a, b, out):
    """np.matmul(a, b, out=out): where blas_twin's kernel gives OpenBLAS's bits, by it."""
    if not blas_twin.run(a, b, out):
        np.matmul(a, b, out=out)


def _mm_half(a, b, out, columns, k):  # (_split's half of a plain GEMM; _mm's body, not a call
    # of it: tools/timeline_step.py times each alone)
    if not blas_twin.run(a, b, out):
        np.matmul(a, b, out=out)


def matmul_bias(a, b, bias, shape, out=None):
    """`r = np.matmul(a, b, out=out); y = r.reshape(shape); np.add(y, bias, out=y); r` (the
    lines own_bias.fuse replaces). When `bias` is one row over r's columns (a projection's
    bias): inside an owned call each half of the split GEMM adds its part of the bias to its
    rows or columns right after computing them, on its own thread: no serial pass over r
    after the join (BENCHMARKS.md "h256"); from blas_gemm.MIN_BYTES of output (a half's, or
    the whole GEMM's when it does not split) the bias is copied into r and the BLAS's GEMM
    accumulates onto it (blas_gemm.gemm_bias: one pass over r fewer, "hblas"). Each element
    is rounded as before, but where the BLAS splits the depth into blocks (OpenBLAS's K
    blocks; at SkylakeX a depth of 384 kept the bits, 512 did not) it adds a block's sums onto
    bias + the earlier blocks' sums: other last bits, fixed for a configuration."""
    n = b.shape[-1] if getattr(b, "ndim", 0) == 2 else 0
    if (
        getattr(bias, "ndim", 0) >= 1
        and bias.shape[-1] == n
        and bias.size == n
        and out is not None
        and out.ndim == 2
        and bias.dtype == out.dtype
        and not np.may_share_memory(out, bias)
    ):
        row = bias.reshape(n)
        owned = _state.depth and threading.get_ident() not in worker_ident
        if not owned or _split(a, b, out, lambda a, b, o, c, k: _mm_bias(a, b, o, row[c])) is None:
            _mm_bias(a, b, out, row)  # (whole)
        return out
    r = matmul(a, b, out=out)
    y = r.reshape(shape)
    np.add(y, bias, out=y)
    return r


def matmul_sum(a, b, x, axes, out=None):
    """`(np.matmul(a, b, out=out), np.add.reduce(x, axes, None, keepdims=False))` (the two lines
    own_bias.fuse replaces: the weight gradient's GEMM and the bias gradient's sum); inside an
    owned call, when the sum keeps x's last axis alone, each half of the split GEMM also sums
    its half of x's columns on its own thread (a column's sum runs over the same elements in
    the same order: the same bits)."""
    nd = getattr(x, "ndim", 0)
    try:
        kept = nd >= 2 and sorted(int(v) % nd for v in np.atleast_1d(axes)) == list(range(nd - 1))
    except (TypeError, ValueError):
        kept = False
    if (
        kept and _state.depth and threading.get_ident() not in worker_ident and x.dtype.kind == "f"
    ):  # (the GEMM's own conditions: _split's)
        n2 = x.shape[-1]
        total = np.empty(n2, x.dtype)
        cut = n2 - n2 // 2
        cols = (slice(0, cut), slice(cut, n2))
        ax = tuple(range(nd - 1))

        def half(a, b, o, c, k):
            _mm(a, b, o)
            np.add.reduce(x[..., cols[k]], axis=ax, out=total[cols[k]])

        done = _split(a, b, out, half)
        if done is not None:
            return done, total
    return matmul(a, b, out=out), np.add.reduce(x, axes, None, keepdims=False)


def _mm_bias(a, b, out, bias):
    if a.shape[1] == 1 and out.dtype.kind == "f" and a.dtype == b.dtype == out.dtype:
        # (K = 1: an outer product, one rounding per element as the BLAS's -- which writes
        # +0.0 for a zero product (C = 0 + a*b), the sign np.multiply's -0.0 gets back by
        # adding a bias whose -0.0 are +0.0: (+-0) + (+0) = +0 = (+0) + (-0); the same bits,
        # tests/test_own_outer.py; 2.5x faster than OpenBLAS at (1600, 1) x (1, 1024) f32)
        np.multiply(a, b, out=out)
        np.add(out, bias + 0.0, out=out)
        return
    if out.nbytes >= blas_gemm.MIN_BYTES and (  # (beta = 1's bits: blas_twin's kernel has them)
        blas_twin.run_bias(a, b, bias, out) or blas_gemm.gemm_bias(a, b, bias, out)
    ):
        return
    np.matmul(a, b, out=out)
    np.add(out, bias, out=out)


def note(program_has_split_loop: bool, mode: str) -> str:
    """The compile report's line for a program with PlanOptions.own_threads `mode`."""
    if mode == "off":
        return ""
    if not program_has_split_loop:
        return "not owned (no loop splits its batch rows)"
    when = "" if mode == "on" else " in calls with >= 2 CPUs and a BLAS policy of >= 2 threads"
    return (
        "owned (BLAS at 1 thread; the loops' batch rows and the time-batched GEMMs of"
        f" >= {MIN_FLOPS:.0e} flops or >= {MIN_OUT_BYTES >> 20} MiB of output split over 2"
        f" threads){when}"
    )
