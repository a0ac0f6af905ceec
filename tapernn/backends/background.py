"""Compiling numba kernels off the caller's thread: a program's fused groups first run their NumPy
lowering through a `Site` (a call slot in the program's bound names); from a site's second call
on, a worker thread imports numba, loads or compiles the kernel for the argument types the site
saw, then swaps the kernel into the slot: later calls run it with no per-call check and no
compile on the caller's path. A program run once never imports numba."""
from __future__ import annotations

import atexit
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np


def enabled() -> bool:
    """$TAPERNN_NUMBA_BACKGROUND (default 1): 0 compiles every kernel before `compile` returns."""
    return os.environ.get("TAPERNN_NUMBA_BACKGROUND", "1") != "0"


def type_key(args: tuple) -> tuple:
    """What numba's dispatcher types each array argument by (dtype, ndim, layout, read-only),
    computed without numba (numba.core.typing.typeof._typeof_ndarray, map_layout)."""
    key = []
    for a in args:
        flags = a.flags
        layout = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "A"
        key.append((a.dtype.str, a.ndim, layout, not flags.writeable))
    return tuple(key)


def numba_signature(key: tuple) -> tuple:
    from numba import from_dtype, types
    return tuple(types.Array(from_dtype(np.dtype(dt)), ndim, layout, readonly=ro)
                 for dt, ndim, layout, ro in key)


class Site:
    """One call site of a kernel in one program: runs `numpy_fn(*operands, *temps, out)` (the
    NumPy lowering of the group) until the worker has the kernel compiled for the types of the
    site's first call, then replaces itself by the kernel in the program's bound names."""

    __slots__ = ("__weakref__", "calls", "handle", "name", "numpy_fn", "owner", "temps")

    def __init__(self, handle: Any, numpy_fn: Callable, temps: list[np.ndarray]):
        self.handle, self.numpy_fn, self.temps = handle, numpy_fn, temps
        self.owner: weakref.ref | None = None
        self.name = ""
        self.calls = 0

    def attach(self, fn: Callable, name: str) -> None:
        """The program function whose keyword default `name` is this site."""
        self.owner, self.name = weakref.ref(fn), name

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        # the first call is left alone: the worker's Python (numba's import, type inference)
        # would share the interpreter lock with it -- the first call of a program is mostly
        # Python (tracing, passes, code generation) -- and a program run once needs no kernel
        self.calls += 1
        if self.calls <= 2:
            try:
                key = type_key(args)
            except AttributeError:  # not all arrays: this site stays on NumPy
                self.calls = 3
            else:
                if self.handle.has(key):  # compiled for these types already
                    self.swap(self.handle.kernel)
                    return self.handle.kernel(*args)
                if self.calls == 2:
                    submit(self.handle, key, self)
        return self.numpy_fn(*args[:-1], *self.temps, args[-1])

    def swap(self, kernel: Callable) -> None:
        fn = self.owner() if self.owner is not None else None
        if fn is not None and fn.__kwdefaults__.get(self.name) is self:
            defaults = dict(fn.__kwdefaults__)
            defaults[self.name] = kernel
            fn.__kwdefaults__ = defaults  # one assignment: a call sees the old or the new slot


_jobs: queue.Queue = queue.Queue()
_worker: threading.Thread | None = None
_start_lock = threading.Lock()
_stopping = False


def submit(handle: Any, key: tuple | None, site: Site | None = None) -> None:
    """Have the worker make `handle`'s kernel ready (key None: only load it) and, for a site,
    compile it for `key` and swap it in. Already compiled for key: swapped now."""
    if site is not None and handle.has(key):
        site.swap(handle.kernel)
        return
    _ensure_worker()
    _jobs.put((handle, key, weakref.ref(site) if site is not None else None))


def _ensure_worker() -> None:
    global _worker
    with _start_lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work, name="tapernn-numba-compiler", daemon=True)
            _worker.start()


def _work() -> None:
    while True:
        handle, key, site_ref = _jobs.get()
        try:
            if not _stopping:
                kernel = handle.prepare(key)  # None: failed (the handle keeps why)
                site = site_ref() if site_ref is not None else None
                if kernel is not None and site is not None:
                    site.swap(kernel)
        finally:
            _jobs.task_done()


def wait(timeout: float | None = None) -> bool:
    """Block until every submitted kernel is compiled and swapped in (True), or `timeout`
    seconds have passed (False)."""
    if timeout is None:
        _jobs.join()
        return True
    done = threading.Event()

    def join() -> None:
        _jobs.join()
        done.set()
    threading.Thread(target=join, daemon=True).start()
    return done.wait(timeout)


def pending() -> int:
    return _jobs.unfinished_tasks


@atexit.register
def _stop() -> None:
    """At exit: drop queued jobs and give the running one a moment (numba writes its cache
    files whole, so an interrupted compile leaves no broken entry)."""
    global _stopping
    _stopping = True
    if _worker is not None and _worker.is_alive():
        wait(timeout=5.0)
