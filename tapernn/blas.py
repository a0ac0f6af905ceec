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
from typing import Any

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


def openblas_paths() -> list[str]:
    """The files of every OpenBLAS loaded in this process (Linux /proc maps; none elsewhere)."""
    import numpy  # noqa: F401  (loads numpy's BLAS so it shows up in the maps)

    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
    except OSError:
        return []  # (not Linux)


def _openblas_libraries() -> list:
    """(set, get) function pairs of every OpenBLAS loaded in this process (Linux /proc maps)."""
    found = []
    for path in openblas_paths():  # (none: not Linux, keep the default threads)
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
    SMALL_GEMM_FLOPS, or whose smaller matmuls (a loop body's counted per step) have more than a
    tenth of the big ones' flops (an RNN's small GEMMs lose more to thread hand-offs than they
    gain: BIG_SHARE), the pool as it is otherwise, and always the pool as it is when the user set OPENBLAS_NUM_THREADS,
    OMP_NUM_THREADS, MKL_NUM_THREADS or BLIS_NUM_THREADS. An int: that many threads for every
    program. None: never touch the pool. Uses threadpoolctl when installed (any BLAS), else
    OpenBLAS's own setter.
    """
    global _policy
    from .errors import ArgumentError

    if not (n is None or n == "auto" or isinstance(n, int) and not isinstance(n, bool) and n > 0):
        raise ArgumentError(f"set_blas_threads expects a positive int, 'auto' or None, got {n!r}")
    _policy = n


# (packed_matmul: the numba backend's step GEMM over a packed weight, scan_pack.py; its kernel
# follows the BLAS pool's thread count)
GEMM_OPS = ("matmul", "packed_matmul")


def largest_gemm_flops(nodes: Iterable) -> float:
    """2·m·k·n (times the batch) of the largest matmul among graph `nodes`."""
    return max(
        (
            2.0 * float(math.prod(n.shape)) * (n.inputs[0].shape[-1] if n.inputs[0].shape else 1)
            for n in nodes
            if n.op in GEMM_OPS
        ),
        default=0.0,
    )


# A program runs with the pool's threads only when its GEMMs of at least SMALL_GEMM_FLOPS carry
# BIG_SHARE times the flops of its smaller ones (a loop body's counted once per step): threads
# gain at most ~1.4x on the big GEMMs (0.7x measured at 1024^2) and lose 3.6-7.6x on the small
# ones (a Sequencer(LSTM(256)) at (73, 32) has 1.2 GFLOP time-batched GEMMs and a loop of
# (32, 256) GEMMs: with the pool's 2 threads its step ran 4-15x slower under load).
BIG_SHARE = 10.0


def _matmuls(nodes: Iterable) -> Iterator[tuple[Any, int]]:
    """(matmul node, times it runs per call) among `nodes`, loop bodies included (a body's
    matmuls run once per step)."""
    stack = [(nodes, 1)]
    while stack:
        group, times = stack.pop()
        for n in group:
            if n.op == "scan":
                stack.append((n.attrs["body"].nodes, times * n.attrs["length"]))
            elif n.op in GEMM_OPS:
                yield n, times


def thread_flops(nodes: Iterable) -> float:
    """The largest GEMM's flops (what `program_threads` takes) when the big GEMMs dominate
    `nodes`' matmul work (see BIG_SHARE), else 0.0 (a program of small GEMMs)."""
    small = big = 0.0
    largest = 0.0
    for n, times in _matmuls(nodes):
        f = largest_gemm_flops([n])
        largest = max(largest, f)
        if f >= SMALL_GEMM_FLOPS:
            big += f * times
        else:
            small += f * times
    return largest if big >= BIG_SHARE * small else 0.0


def vector_products(nodes: Iterable) -> bool:
    """Whether a matmul among `nodes` (loop bodies included) is a matrix-vector product or a
    dot: a 1-D operand, or one row or one column (OpenBLAS's GEMV and DOT split their inner
    sums between threads, so their last bits depend on the thread count)."""
    for n, _ in _matmuls(nodes):
        if n.op != "matmul":  # (the packed kernel splits columns, never an inner sum)
            continue
        a, b = n.inputs[0].shape, n.inputs[1].shape
        if len(a) < 2 or len(b) < 2 or a[-2] == 1 or b[-1] == 1:
            return True
    return False


def _user_env_check():
    """A function telling whether the user set one of _ENV_VARS (non-empty), read at each call
    (a test or a program may set them at any time): os.environ's own byte-keyed dict where
    CPython has it (0.1 us a lookup; os.environ.get costs ~2 us), else os.environ.get."""
    data, encode = getattr(os.environ, "_data", None), getattr(os.environ, "encodekey", None)
    if isinstance(data, dict) and callable(encode):
        try:
            keys = tuple(encode(v) for v in _ENV_VARS)
        except (TypeError, ValueError, AttributeError):  # another layout: the public way
            keys = None
        if keys is not None:
            return lambda: any(data.get(k) for k in keys)
    return lambda: any(os.environ.get(v) for v in _ENV_VARS)


_user_set_threads = _user_env_check()


def program_threads(largest_gemm_flops: float) -> int | None:
    """The thread count a program with this largest matmul runs with (None: leave the pool)
    when its calls are not timed (blas_tuning: "auto" times programs with big enough GEMMs)."""
    if _policy != "auto":
        return _policy  # type: ignore[return-value]
    if _user_set_threads():
        return None
    return 1 if largest_gemm_flops < SMALL_GEMM_FLOPS else None


def measuring() -> bool:
    """Whether "auto" is in force (not a fixed count, None, or a user's environment variable):
    then programs with big enough GEMMs time their thread count (blas_tuning)."""
    return _policy == "auto" and not _user_set_threads()


class _Limiter:
    """Sets the BLAS pools to n threads for the outermost of nested or concurrent uses and
    restores them after the last; the pools are looked up once, and set (and restored) only
    where they hold another count: `enter`/`exit` cost about a microsecond per program call."""

    def __init__(self) -> None:
        self._pools: list | None = None
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[tuple] = []  # (set, count before) of the pools the outermost changed
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
                self._pools = [_raw_pair(lib) for lib in libs]
            except ImportError:
                self._pools = _openblas_libraries()
        return self._pools

    def pool_count(self) -> int:
        """The pools' thread count outside any use (the first pool's; 0 inside a use, e.g. a
        program nested in another's call, or where no pool can be set): what "auto" measures
        one thread against."""
        if self._depth:
            return 0
        with self._lock:
            if self._stale:
                self._pools, self._stale = None, False
            pools = self.pools()
            return pools[0][1]() if pools else 0

    def enter(self, n: int) -> None:
        """Start a use with `n` threads (the outermost use sets them); pair with `exit()`."""
        with self._lock:
            if self._depth == 0:
                if self._stale:
                    self._pools, self._stale = None, False
                saved = []
                for set_, get in self.pools():
                    count = get()
                    if count != n:
                        set_(n)
                        saved.append((set_, count))
                self._saved = saved
            self._depth += 1

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for set_, count in self._saved:
                    set_(count)
                self._saved = []

    @contextlib.contextmanager
    def limit(self, n: int) -> Iterator[None]:
        self.enter(n)
        try:
            yield
        finally:
            self.exit()


def _raw_pair(lib) -> tuple:
    """(set, get) of a threadpoolctl controller: OpenBLAS's own C functions where its library
    exports them (a ctypes call, 0.3-0.6 us; the controller's methods cost 1-2 us), else the
    controller's methods."""
    try:
        dll = ctypes.CDLL(lib.filepath)
        for set_name, get_name in zip(_SETTERS, _GETTERS):
            if hasattr(dll, set_name) and hasattr(dll, get_name):
                set_, get = getattr(dll, set_name), getattr(dll, get_name)
                set_.restype, get.restype = None, ctypes.c_int
                set_.argtypes, get.argtypes = [ctypes.c_int], []
                if get() == lib.get_num_threads():  # the same pool
                    return set_, get
    except (OSError, AttributeError, TypeError):
        pass
    return lib.set_num_threads, lib.get_num_threads


limiter = _Limiter()
