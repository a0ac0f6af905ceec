"""Limiting the BLAS thread pool. An RNN's matrices are small (batch x hidden): on a 2-core machine
OpenBLAS threads cost more in hand-offs and spinning than they gain (measured 4-8x slower), so
compiled programs with small GEMMs run with one thread by default (`set_blas_threads`)."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
from collections.abc import Iterable, Iterator

# OpenBLAS builds export the setter under several names (numpy's wheels prefix and suffix it)
_SETTERS = (
    "openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
)
_GETTERS = tuple(name.replace("set_", "get_") for name in _SETTERS)


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most `n` BLAS threads (None: leave the pool alone)."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits  # the thorough way, when installed
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
        return
    libraries = _openblas_libraries()
    previous = [(set_, get()) for set_, get in libraries]
    for set_, _ in libraries:
        set_(n)
    try:
        yield
    finally:
        for set_, count in previous:
            set_(count)


def _openblas_libraries() -> list:
    """(set, get) function pairs of every OpenBLAS loaded in this process (Linux /proc maps)."""
    import numpy  # noqa: F401  (loads numpy's BLAS so it shows up in the maps)

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
    except OSError:
        return []  # not Linux: keep the default threads
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in zip(_SETTERS, _GETTERS):
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                found.append((getattr(lib, set_name), getattr(lib, get_name)))
                break
    return found


# ---- the library default: small programs run with one BLAS thread ---------------------------

# Measured on a 2-core machine with the other core busy (README, "BLAS threads"): a Sequencer(LSTM)
# training step with 2 BLAS threads took 1.1x (H=32, B=4), 7.6x (H=128, B=32) and 3.6x (H=256,
# B=32) the time of 1 thread; one 1024x1024 matmul (2.1 GFLOP) took 0.7x. Below this largest
# GEMM size a program runs with one thread.
SMALL_GEMM_FLOPS = 1e9
_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
_policy: int | str | None = "auto"


def set_blas_threads(n: int | str | None) -> None:
    """BLAS threads while tapernn's compiled programs run.

    "auto" (the default): one thread for programs whose largest matmul is below
    SMALL_GEMM_FLOPS (an RNN's small GEMMs lose more to thread hand-offs than they gain), the
    pool as it is otherwise, and always the pool as it is when the user set OPENBLAS_NUM_THREADS,
    OMP_NUM_THREADS, MKL_NUM_THREADS or BLIS_NUM_THREADS. An int: that many threads for every
    program. None: never touch the pool. Uses threadpoolctl when installed (any BLAS), else
    OpenBLAS's own setter.
    """
    global _policy
    from .errors import TapernnError

    if not (n is None or n == "auto" or isinstance(n, int) and not isinstance(n, bool) and n > 0):
        raise TapernnError(f"set_blas_threads expects a positive int, 'auto' or None, got {n!r}")
    _policy = n


def largest_gemm_flops(nodes: Iterable) -> float:
    """2·m·k·n (times the batch) of the largest matmul among graph `nodes`."""
    return max(
        (
            2.0 * float(math.prod(n.shape)) * (n.inputs[0].shape[-1] if n.inputs[0].shape else 1)
            for n in nodes
            if n.op == "matmul"
        ),
        default=0.0,
    )


def program_threads(largest_gemm_flops: float) -> int | None:
    """The thread count a program with this largest matmul runs with (None: leave the pool)."""
    if _policy != "auto":
        return _policy  # type: ignore[return-value]
    if any(os.environ.get(v) for v in _ENV_VARS):
        return None
    return 1 if largest_gemm_flops < SMALL_GEMM_FLOPS else None


class _Limiter:
    """Sets the BLAS pools to n threads for the outermost of nested or concurrent uses and
    restores them after the last; the pools are looked up once (a call costs microseconds)."""

    def __init__(self) -> None:
        self._pools: list | None = None
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[int] = []
        self._stale = False

    def refresh(self) -> None:
        """Look the pools up again at the next outermost use: a library loaded since (numba's
        np.dot calls scipy's own OpenBLAS) would otherwise keep its default threads."""
        with self._lock:
            self._stale = True

    def pools(self) -> list:
        if self._pools is None:
            try:
                from threadpoolctl import ThreadpoolController

                libs = ThreadpoolController().select(user_api="blas").lib_controllers
                self._pools = [(lib.set_num_threads, lib.get_num_threads) for lib in libs]
            except ImportError:
                self._pools = _openblas_libraries()
        return self._pools

    @contextlib.contextmanager
    def limit(self, n: int) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                if self._stale:
                    self._pools, self._stale = None, False
                pools = self.pools()
                self._saved = [get() for _, get in pools]
                for set_, _ in pools:
                    set_(n)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for (set_, _), count in zip(self.pools(), self._saved):
                        set_(count)


limiter = _Limiter()
