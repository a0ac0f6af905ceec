"""Compiling numba kernels off the caller's thread. A program's fused group is called through a
`Site` (a bound name of the program; with $TAPERNN_NUMBA_BACKGROUND=0 its first call compiles
the kernel there and runs it): its first call runs the group's NumPy lowering while a
worker thread imports numba and loads or compiles the kernel for the argument types that call
saw; its second call waits for that kernel if it is not ready yet and puts it in the Site's place,
so every later call runs it directly. Which call ran which lowering is fixed (the first NumPy,
the others numba), never a matter of timing: runs stay reproducible bit for bit."""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np


def enabled() -> bool:
    """$TAPERNN_NUMBA_BACKGROUND (default 1): 0 compiles each kernel at its call site's first
    call, for that call's argument types, which then runs numba (a program's first call too)."""
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

    return tuple(
        types.Array(from_dtype(np.dtype(dt)), ndim, layout, readonly=ro)
        for dt, ndim, layout, ro in key
    )


class Site:
    """One call site of a kernel in one program (see the module docstring): `numpy_fn(*operands,
    *temps, out)` is the group's NumPy lowering, `handle` the numba_backend.Kernel."""

    __slots__ = (
        "__weakref__",
        "calls",
        "handle",
        "key",
        "later",
        "name",
        "numpy_fn",
        "owner",
        "ready",
        "temps",
    )

    def __init__(
        self, handle: Any, numpy_fn: Callable, temps: list[np.ndarray], later: bool = True
    ):
        self.handle, self.numpy_fn, self.temps, self.later = handle, numpy_fn, temps, later
        self.owner: weakref.ref | None = None
        self.name = ""
        self.calls = 0
        self.key: tuple | None = None
        self.ready: threading.Event | None = None

    def attach(self, fn: Callable, name: str) -> None:
        """The program function whose keyword default `name` is this site."""
        self.owner, self.name = weakref.ref(fn), name

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            try:
                self.key = type_key(args)
            except AttributeError:  # not all arrays: this site stays on NumPy
                return self._numpy(args)
            if not self.later:  # compiled now, for these types (TAPERNN_NUMBA_BACKGROUND=0)
                self.handle.prepare(self.key)
                if self.handle.has(self.key):
                    return self._swap()(*args)
                return self._numpy(args)  # the kernel failed (handle.error says why)
            # the first call runs NumPy even when another program compiled the kernel already:
            # a model built twice in one process computes the same bits both times
            if not self.handle.has(self.key):
                self.ready = request(self.handle, self.key)
            return self._numpy(args)
        if self.ready is not None:
            self.ready.wait()
            self.ready = None
        if self.handle.has(self.key):
            return self._swap()(*args)
        return self._numpy(args)  # the kernel failed (handle.error says why): NumPy from now on

    def _numpy(self, args: tuple) -> np.ndarray:
        return self.numpy_fn(*args[:-1], *self.temps, args[-1])

    def _swap(self) -> Callable:
        kernel = self.handle.kernel
        fn = self.owner() if self.owner is not None else None
        if fn is not None and fn.__kwdefaults__.get(self.name) is self:
            defaults = dict(fn.__kwdefaults__)
            defaults[self.name] = kernel
            fn.__kwdefaults__ = defaults
        return kernel


_jobs: queue.Queue = queue.Queue()
_worker: threading.Thread | None = None
_start_lock = threading.Lock()
_requests: dict[tuple[int, tuple], tuple[Any, threading.Event]] = {}


def request(handle: Any, key: tuple) -> threading.Event:
    """An event set once the worker has made `handle`'s kernel for argument types `key` (or
    failed: handle.error); one job per (kernel, types)."""
    with _start_lock:
        known = _requests.get((id(handle), key))
        if known is not None:
            return known[1]
        event = threading.Event()
        _requests[(id(handle), key)] = (handle, event)
        _jobs.put((handle, key, event))
        _ensure_worker()
        return event


def _ensure_worker() -> None:
    global _worker
    if _worker is None or not _worker.is_alive():
        _worker = threading.Thread(target=_work, name="tapernn-numba-compiler", daemon=True)
        _worker.start()


def _work() -> None:
    while True:
        handle, key, event = _jobs.get()
        try:
            handle.prepare(key)  # on failure the handle keeps why; its sites stay on NumPy
        finally:
            event.set()
            _jobs.task_done()


def wait(timeout: float | None = None) -> bool:
    """Block until every requested kernel is ready (True), or `timeout` seconds have passed
    (False)."""
    with _start_lock:
        events = [e for _, e in _requests.values()]
    deadline = None if timeout is None else time.monotonic() + timeout
    for event in events:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not event.wait(left):
            return False
    return True


def _after_fork_in_child() -> None:
    """A forked child has no worker: queue its unfinished requests again."""
    global _jobs, _worker, _start_lock
    _jobs, _worker, _start_lock = queue.Queue(), None, threading.Lock()
    for (_, key), (handle, event) in list(_requests.items()):
        if not event.is_set():
            _jobs.put((handle, key, event))
    if _jobs.qsize():
        _ensure_worker()


os.register_at_fork(after_in_child=_after_fork_in_child)
