"""When background.py's worker may start a job: not while a thread holds it (`held`) -- a
trace and compile whose kernels are due many calls later ("auto", BENCHMARKS.md "htrace"), a
model's compile and each numba program's first call ("hwarm2") -- unless a thread waits for a
kernel (`Ready.wait`): no caller ever waits on a held worker. numba's import, setup and cache
loads are Python holding the GIL; beside a Python-bound call they stretched it (a warm (32, 50,
256) model's call 1 ~2x), and the switch call waits for whatever is left in any case."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator

# [threads holding the worker, threads waiting for a kernel meanwhile]
_pause = [0, 0]
_paused = threading.Condition()
# the holds with a limit (`held(at_most=...)`): their ends, time.monotonic()
_limits: dict[object, float] = {}
# when the last hold ended (time.monotonic()): the gap after it counts from then, also for a
# worker that first asks after it (its job requested at a compile's end, before the first call)
_ended = [float("-inf")]

# a model's compile and each first call hold the worker at most this long: past it the call is
# a big model's real work (its GEMMs free the GIL) and the worker's compiles go on beside it,
# as the switch call would otherwise wait for all of them (a warm (32, 50, 256) call 1 is
# ~0.4 s here)
FIRST_CALL_HOLD_S = 0.5

# after a hold ends, the worker starts a job only if no other hold began within this many
# seconds: a model's call 1 is its forward's compile and first call, then its backward's first
# call, each held, with microseconds of Python between them
HELD_GAP_S = 0.02


class Ready(threading.Event):
    """A requested kernel's event: set once the worker has made it. While a thread waits on it
    the worker runs, held or not."""

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        with _paused:
            _pause[1] += 1
            _paused.notify_all()
        try:
            return super().wait(timeout)
        finally:
            with _paused:
                _pause[1] -= 1


@contextlib.contextmanager
def held(at_most: float | None = None) -> Iterator[None]:
    """Keep the worker from starting another job (its current one runs on) while this block
    runs -- for at most `at_most` seconds if given -- and for HELD_GAP_S after (`turn`); jobs
    asked for in it are made from then on, or from any wait for a kernel."""
    token = object()
    with _paused:
        _pause[0] += 1
        if at_most is not None:
            _limits[token] = time.monotonic() + at_most
    try:
        yield
    finally:
        with _paused:
            _pause[0] = max(0, _pause[0] - 1)  # (0 in a child forked meanwhile)
            _limits.pop(token, None)
            _ended[0] = time.monotonic()
            _paused.notify_all()


def first_call() -> contextlib.AbstractContextManager[None]:
    """The hold of a model's compile and of a program's first call (FIRST_CALL_HOLD_S)."""
    return held(FIRST_CALL_HOLD_S)


def _kept(now: float) -> tuple[bool, float | None]:
    """(whether a hold keeps the worker at `now`, the seconds until that may change: None for
    a hold without a limit)."""
    if _pause[0] > len(_limits):
        return True, None
    ends = [end for end in _limits.values() if end > now]
    return bool(ends), (min(ends) - now if ends else None)


def turn() -> None:
    """Return once the worker may start a job: a thread waits for a kernel, or every hold is
    past its limit, or none holds it and none took it within HELD_GAP_S of the last hold's end."""
    with _paused:
        while not _pause[1]:
            now = time.monotonic()
            kept, change = _kept(now)
            if kept:
                _paused.wait(change)
            elif _pause[0]:  # (holds past their limits)
                return
            elif now < _ended[0] + HELD_GAP_S:
                _paused.wait(_ended[0] + HELD_GAP_S - now)  # (a hold's start or a waiter ends it)
            else:
                return


def holding() -> bool:
    """Whether a thread holds the worker now, whatever its hold's limit (or one ended within
    HELD_GAP_S), and none waits for a kernel: background's jobs due calls later wait then."""
    with _paused:
        return not _pause[1] and (_pause[0] > 0 or time.monotonic() < _ended[0] + HELD_GAP_S)


class Jobs(queue.Queue):
    """background.py's queue: first in, first out, but a job whose handle is `queued_last` (the
    packed GEMM's driver and packs: packed.py) goes behind every other and stays there -- a
    job asked for later (a fused group of a program's first call) goes before it: the switch
    call waits for those alone, the packed driver is due at the packed call."""

    def _put(self, item: tuple) -> None:
        if not _last(item):
            for at, queued in enumerate(self.queue):
                if _last(queued):
                    self.queue.insert(at, item)
                    return
        self.queue.append(item)


def _last(item: tuple) -> bool:
    return getattr(item[0], "queued_last", False)


def behind(jobs: Jobs, item: tuple) -> bool:
    """Whether the worker's job `item` (taken from `jobs`) is `queued_last` (the packed driver:
    due at the packed call) and went back into `jobs` -- behind a job asked for meanwhile; or
    for 20 ms while a thread holds the worker, however long past the hold's limit (a cold
    model's call 1 asks for the fused groups its switch call waits for: `holding`), or while a
    compile child has a job, which comes back to the queue's front for the worker to load (its
    5 s compile here first delayed that load: the switch call waited for it; the child may take
    the driver next). False: the worker makes it now."""
    if not _last(item):
        return False
    with jobs.mutex:
        others = any(not _last(queued) for queued in jobs.queue)
        lent = jobs.unfinished_tasks - len(jobs.queue) > 1  # (this one, and a child's)
    if not others and not lent and not holding():
        return False
    jobs.put(item)
    jobs.task_done()
    if not others:
        time.sleep(0.02)  # (then taken again: nothing else is queued)
    return True


def after_fork() -> None:
    """A forked child: no thread holds or waits (the threads holding were the parent's)."""
    global _paused
    _paused, _pause[:] = threading.Condition(), [0, 0]
    _limits.clear()
    _ended[0] = float("-inf")
