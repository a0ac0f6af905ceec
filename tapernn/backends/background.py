"""Compiling numba kernels off the caller's thread. A program's fused group is called through a
`Site` (a bound name of the program; with $TAPERNN_NUMBA_BACKGROUND=0 its first call compiles
the kernel there and runs it). With background compilation (the default) a top-level program
is called through a `Gate` until its kernels take over: calls before the switch call
($TAPERNN_NUMBA_SWITCH_CALL, default 2) run every group's NumPy lowering -- loop bodies too,
however many times a loop calls them -- while a worker thread imports numba and loads or
compiles the kernels (asked for when the program is compiled, where their argument types are
known then, else at the group's first call); the switch call waits for those not ready yet and
puts each in its Site's place; loops' packed step GEMMs run NumPy's matmul up to the packed
call, which waits for their driver (packed_call; its job behind the groups'). Which call ran
which lowering is fixed by the call count, never by timing: runs stay reproducible bit for
bit, cold or warm cache. A failed kernel leaves its groups on NumPy, said in the `fallbacks`.
Under the "auto" backend a Gate also holds back the asking: nothing is asked for (numba not even
imported) before the program's start call (backends.auto_calls), and its switch call is later.
While a thread traces and compiles a program whose kernels are not due for many calls ("auto"'s
second plan), and while a model compiles and each program runs its first call, the worker
starts no job (worker_pause.py: numba's import, setup and loads are Python holding the GIL);
a wait for any kernel lets it go on. While it has jobs, the interpreter's switch interval is
shorter (WORKER_SWITCH_S): a caller that gave up the GIL for a GEMM gets it back sooner."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import TapernnError
from . import compile_child, worker_pause
from .worker_pause import (
    Ready,
    first_call,
    held,  # noqa: F401 (background.held: auto_plans' second plan)
)


def enabled(auto: bool = False) -> bool:
    """$TAPERNN_NUMBA_BACKGROUND (default 1): 0 compiles each kernel at its call site's first
    call, for that call's argument types, which then runs numba (a program's first call too).
    Not under "auto" (`auto`: the program's backend is), whose start and switch calls always
    hold."""
    if auto:
        return True
    return os.environ.get("TAPERNN_NUMBA_BACKGROUND", "1") != "0"


def switch_call() -> int:
    """$TAPERNN_NUMBA_SWITCH_CALL (default 2): the top-level program call from which numba's
    kernels run (the calls before it run NumPy while they compile)."""
    return _call_setting("TAPERNN_NUMBA_SWITCH_CALL", "2")


def packed_call() -> int:
    """$TAPERNN_NUMBA_PACKED_CALL (default PACKED_CALL): the top-level call from which a loop's
    packed step GEMMs run their driver (packed.py; NumPy's matmul before), the switch call if
    later: its ~5.5 s cold compile is not on the switch call's wait (BENCHMARKS.md "hcold9")."""
    return _call_setting("TAPERNN_NUMBA_PACKED_CALL", str(PACKED_CALL))


# (BENCHMARKS.md "hcold9": a cold (32, 50, 256) model's driver was ready before it at loads 5-11,
# so a training loop rarely waits at it; a warm run's calls before it run OpenBLAS's step GEMMs
# unsplit: 1.44x (float64) - 1.55x (float32) the packed calls' wall, +1.4-2.4 s over 50 calls)
PACKED_CALL = 50


def _call_setting(name: str, default: str) -> int:
    text = os.environ.get(name, default)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise TapernnError(f"${name}: expected an integer >= 1, got {text!r}")
    return value


# .call: the running top-level program's call number (Gate); .start, .at, .packed: its Gate's
# start, switch and packed calls
_local = threading.local()


def started(own_calls: int) -> bool:
    """Whether a kernel may be asked for in this call: the running top-level program's call
    number has reached its Gate's start call (1 but under "auto"); outside any Gate, always."""
    call = getattr(_local, "call", 0)
    return not call or call >= _local.start


def due(own_calls: int) -> bool:
    """Whether a pending kernel takes over in this call: the running top-level program's call
    number has reached its Gate's switch call -- or, called outside any Gate, the caller's own
    call count has reached switch_call()."""
    call = getattr(_local, "call", 0)
    if call:
        return call >= _local.at
    return own_calls >= switch_call()


def packed_due(own_calls: int) -> bool:
    """`due` for the packed GEMM's driver (packed.PackedSite): from the running program's packed
    call; outside any Gate, from the caller's own call count reaching it."""
    call = getattr(_local, "call", 0)
    if call:
        return call >= _local.packed
    return own_calls >= max(switch_call(), packed_call())


class Gate:
    """A top-level numba program's `run` until its `last` call has run: numbers its calls for
    every Site and loop or program switch they reach (the module docstring), then takes itself
    out. `packed`: packed_call(); None under "auto" (its driver from its switch call too)."""

    __slots__ = ("at", "calls", "compiled", "first_held", "inner", "packed", "start")

    def __init__(self, compiled: Any, calls: tuple[int, int] | None = None):
        self.compiled, self.inner = compiled, compiled.run
        self.calls = 0
        self.start, self.at = calls or (1, switch_call())
        self.packed = packed_call() if calls is None else None
        self.first_held = calls is None  # (not "auto"'s: made over the calls before its switch)

    def last(self) -> int:
        """The call from which every kernel of the program runs (its switch or packed call)."""
        return max(self.at, self.packed or 0)

    def __call__(self, args: Any) -> Any:
        self.calls += 1
        outer = getattr(_local, "call", 0)
        if not outer:
            _local.call, _local.start, _local.at = self.calls, self.start, self.at
            _local.packed = self.last()
        try:
            if self.calls == 1 and self.first_held:
                with first_call():
                    out = self.inner(args)
            else:
                out = self.inner(args)
        finally:
            if not outer:
                _local.call = 0
        if self.calls >= self.last() and self.compiled.__dict__.get("run") is self:
            del self.compiled.run  # (a whole-program kernel may have set its own `run`)
            _lift_failures(self.compiled.report)
        return out


def _lift_failures(report: Any) -> None:
    """Copy the background failures of loop bodies' kernels (their Sites report to the body's
    CompileReport; a packed GEMM's too: packed.FAILED) into the top-level report's fallbacks,
    where a model's report shows them."""
    for loop in report.loops:
        for why in loop.body.fallbacks:
            if (FAILED in why or why.startswith("packed GEMM:")) and why not in report.fallbacks:
                report.fallbacks.append(why)


FAILED = "(in the background; NumPy runs it)"


def install_gate(compiled: Any, calls: tuple[int, int] | None = None) -> None:
    """Call `compiled` (a top-level executor.Compiled on the numba backend) through a Gate while
    its kernels compile in the background; `calls`: its (start, switch) calls under "auto".
    The report says from which call a loop's packed step GEMMs run (its backend_note)."""
    if calls is not None or enabled():
        gate = compiled.run = Gate(compiled, calls)
        report, note = compiled.report, f"packed step GEMMs from call {gate.last()} (numba)"
        if gate.packed and any(PACKED_NOTE in loop.body.notes for loop in report.loops):
            report.backend_note = "; ".join(filter(None, (report.backend_note, note)))


PACKED_NOTE = "step GEMMs over loop weights packed once per loop call"  # (scan_hoist's)


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
    *temps, out)` is the group's NumPy lowering, `handle` the numba_backend.Kernel; `report`
    (the program's CompileReport, set by executor.Compiled) gets a line if the kernel fails."""

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
        "report",
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
        self.report: Any = None

    def attach(self, fn: Callable, name: str) -> None:
        """The program function whose keyword default `name` is this site."""
        self.owner, self.name = weakref.ref(fn), name

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            try:
                self.key = type_key(args)
            except AttributeError:  # not all arrays: this site stays on NumPy
                self.later = False
                return self._numpy(args)
            if not self.later:  # compiled now, for these types (TAPERNN_NUMBA_BACKGROUND=0)
                self.handle.prepare(self.key)
                if self.handle.has(self.key):
                    return self._swap()(*args)
                return self._numpy(args)  # the kernel failed (handle.error says why)
        if self.later:
            if self.ready is None:
                if not started(self.calls):
                    return self._numpy(args)
                self.ready = request(self.handle, self.key)
            if due(self.calls):
                self.ready.wait()
                self.later = False
                if self.handle.has(self.key):
                    return self._swap()(*args)
                self._failed()
        return self._numpy(args)  # before the switch call, or the kernel failed: NumPy

    def _numpy(self, args: tuple) -> np.ndarray:
        return self.numpy_fn(*args[:-1], *self.temps, args[-1])

    def _failed(self) -> None:
        why = self.handle.error or "not compiled for these argument types"
        if self.report is not None:
            self.report.fallbacks.append(f"{self.name}: {why} {FAILED}")

    def _swap(self) -> Callable:
        kernel = self.handle.kernel
        fn = self.owner() if self.owner is not None else None
        if fn is not None and fn.__kwdefaults__.get(self.name) is self:
            defaults = dict(fn.__kwdefaults__)
            defaults[self.name] = kernel
            fn.__kwdefaults__ = defaults
        return kernel


_jobs: queue.Queue = worker_pause.Jobs()
_worker: threading.Thread | None = None
_start_lock = threading.Lock()
# (id(handle), types) -> (a weak reference to the handle, its event): the entry goes when the
# handle does (a program's step loop holds the program's arrays: kept here, every model a
# process ever ran stayed in memory), before its id can name another handle
_requests: dict[tuple[int, tuple], tuple[Callable[[], Any], threading.Event]] = {}
_counts = [0, 0]  # jobs queued (under _start_lock), jobs finished (by the worker)


def activity() -> tuple[int, int, int]:
    """(jobs queued, jobs finished, jobs unfinished now): equal readings before and after a
    call, with none unfinished, mean the worker compiled nothing during it (its CPU time would
    count in the process's: scan_layout's timed trial)."""
    return _counts[0], _counts[1], _jobs.unfinished_tasks


def request(handle: Any, key: tuple) -> threading.Event:
    """An event set once the worker has made `handle`'s kernel for argument types `key` (or
    failed: handle.error); one job per (kernel, types)."""
    general = getattr(handle, "general", None)
    ident = (id(handle), general(key) if general is not None else key)
    with _start_lock:
        known = _requests.get(ident)
        if known is not None:
            return known[1]
        event = Ready()
        _requests[ident] = (_weak(handle, ident), event)
        _jobs.put((handle, key, event))
        _counts[0] += 1
        _ensure_worker()
    compile_child.offered(_jobs)  # (a child takes some: compile_child's server)
    return event


def _weak(handle: Any, ident: tuple) -> Callable[[], Any]:
    """A weak reference to `handle` whose death drops its _requests entry (a strong one when
    `handle` takes no weak references)."""
    try:
        return weakref.ref(handle, lambda _: _requests.pop(ident, None))
    except TypeError:
        return lambda: handle


def request_planned(handle: Any) -> None:
    """Ask for `handle`'s kernel (a numba_backend.Kernel) at compile time when its one
    signature is known without a call (2-D kernels: Kernel.planned_key); else only have the
    worker import and set up numba meanwhile."""
    key = handle.planned_key()
    if key is not None:
        request(handle, key)
    else:
        start_numba()


def numba_imported() -> bool:
    """Whether numba is fully imported in this process (not while a worker thread imports it):
    a kernel that is not a program's may be asked for then -- a NumPy-only process never
    imports numba for one (nn/tap_digest's, own_threads' join spin)."""
    numba = sys.modules.get("numba")
    spec = getattr(numba, "__spec__", None)
    return (
        numba is not None and not getattr(spec, "_initializing", False) and hasattr(numba, "njit")
    )


def loaded(fn: Any, *probe: Any, **options: Any) -> Any:
    """The numba dispatcher `fn` of a tapernn module after one call on `probe` (loading or
    compiling it); a disk-cache entry of another import path fails that call: then fn's
    Python function compiled anew (njit `options`) and called on `probe`."""
    try:
        fn(*probe)
    except Exception:  # noqa: BLE001 -- a disk-cache entry of another import path
        from numba import njit

        fn = njit(**options)(fn.py_func)
        fn(*probe)
    return fn


def start_numba() -> None:
    """Have the worker import and set up numba (once), ahead of the kernels it will compile."""
    with _start_lock:
        if _numba_started[0]:
            return
        _numba_started[0] = True
        _jobs.put((None, None, Ready()))
        _counts[0] += 1
        _ensure_worker()


_numba_started = [False]


def _setup_numba() -> None:
    from .numba_setup import setup

    setup()


def _ensure_worker() -> None:
    global _worker
    if _worker is None or not _worker.is_alive():
        _worker = threading.Thread(target=_work, name="tapernn-numba-compiler", daemon=True)
        _worker.start()


# while the worker has jobs, the interpreter's switch interval (sys.setswitchinterval, 5 ms by
# default) is at most this: numba's import and compiles are mostly GIL-holding Python, and each
# time the caller's step releases the GIL (a GEMM, a ufunc) the worker takes it, the caller
# then waiting up to the interval to get it back -- a NumPy-planned (32, 50, 256) f32 step beside
# a compiling thread ran 98-99 ms instead of 106-111 (blocked 26 ms instead of 33); under "auto",
# cold, the caller's blocked time over calls 11-99 went 2.0 -> 1.2 s at load ~9, but only
# 3.7 -> 3.5 s with a core each: the rest is the GIL's share, which no interval changes
# (BENCHMARKS.md "hearly"); restored when the queue is empty, unless changed meanwhile
WORKER_SWITCH_S = 0.0005
_interval: list[float | None] = [None, None]  # (the interval before the worker's, the worker's)


def _switch_fast() -> None:
    if _interval[0] is None:
        before = sys.getswitchinterval()
        sys.setswitchinterval(min(before, WORKER_SWITCH_S))
        _interval[:] = [before, sys.getswitchinterval()]  # (as read back: microseconds)


def _switch_back() -> None:
    """The interval before the worker's jobs, unless someone set another meanwhile."""
    before, mine = _interval
    if before is not None:
        _interval[:] = [None, None]
        if sys.getswitchinterval() == mine:
            sys.setswitchinterval(before)


def _work() -> None:
    while True:
        handle, key, event = _jobs.get()
        worker_pause.turn()
        if _later(handle, key, event) or worker_pause.behind(_jobs, (handle, key, event)):
            continue
        _switch_fast()
        try:
            if handle is None:  # numba's import and setup, ahead of the kernels
                try:
                    _setup_numba()
                except Exception:  # noqa: BLE001,S110 -- the kernels' own jobs will say why
                    pass
            else:
                handle.prepare(key)  # on failure the handle keeps why; its sites stay on NumPy
        finally:
            handle = key = None  # (not held once its waiters go on, nor while the next is awaited)
            event.set()
            _counts[1] += 1
            _jobs.task_done()
            event = None
            if _jobs.empty():
                _switch_back()


def _later(handle: Any, key: Any, event: threading.Event) -> bool:
    """While a child process compiles this job's kernel (compile_child.py): put the job back
    at the queue's end when a job whose kernel no child compiles waits (the worker makes that
    meanwhile), else wait here for either -- the child's end (then the job: a load from
    numba's cache) or such a job asked for meanwhile (a model's reverse loop, asked for in its
    backward after its forward loop's child started)."""
    source = getattr(handle, "source", None)
    while compile_child.running_for(source):
        if any(not compile_child.running_for(getattr(h, "source", None)) for h, _, _ in _queued()):
            _jobs.put((handle, key, event))
            _jobs.task_done()
            return True
        time.sleep(0.02)
    return False


def _queued() -> list:
    with _jobs.mutex:
        return list(_jobs.queue)


def failure(e: BaseException) -> str:
    """`<type>: <first line>` of a kernel's failure, and `e` with the exceptions it chains let
    go of their tracebacks: numba keeps a failed compile's exception (its failed-compile
    cache), and the frames of its traceback held the handle that asked -- a dropped model's
    kernels and arrays stayed for the process's life."""
    seen, link = set(), e
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def wait(timeout: float | None = None) -> bool:
    """Block until every requested kernel is ready (True), or `timeout` seconds have passed
    (False)."""
    with _start_lock:
        events = [e for _, e in _requests.copy().values()]  # (a dying handle pops its entry)
    deadline = None if timeout is None else time.monotonic() + timeout
    for event in events:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not event.wait(left):
            return False
    return True


def _after_fork_in_child() -> None:
    """A forked child has no worker: queue its unfinished requests again."""
    global _jobs, _worker, _start_lock
    _jobs, _worker, _start_lock = worker_pause.Jobs(), None, threading.Lock()
    worker_pause.after_fork()
    for (_, key), (ref, event) in _requests.copy().items():
        handle = ref()
        if handle is not None and not event.is_set():
            _jobs.put((handle, key, event))
    if _jobs.qsize():
        _ensure_worker()
    else:
        _switch_back()  # (forked while the parent's worker had a job: nothing to do here)


os.register_at_fork(after_in_child=_after_fork_in_child)
