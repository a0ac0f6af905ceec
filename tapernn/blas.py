"""Limiting the BLAS thread pool. An RNN's matrices are small (batch x hidden): on a 2-core machine
OpenBLAS threads cost more in hand-offs and spinning than they gain (measured 5-10x slower)."""
from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

# OpenBLAS builds export the setter under several names (numpy's wheels prefix and suffix it)
_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
            "openblas_set_num_threads64_", "scipy_openblas_set_num_threads")
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
