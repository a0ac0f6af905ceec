"""When background.py's worker may start a job: not while a thread holds it (`held`) -- a
trace and compile whose kernels are due many calls later ("auto", BENCHMARKS.md "htrace"), a
model's compile and each numba program's first call ("hwarm2") -- unless a thread waits for a
kernel (`Ready.wait`): no caller ever waits on a held worker. numba's import, setup and cache
loads are Python holding the GIL; beside a Python-bound call they stretched it (a warm (32, 50,
256) model's call 1 ~2x), and the switch call waits for whatever is left in any case."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# [threads holding the worker, threads waiting for a kernel meanwhile]
_pause = [0, 0]
_paused = threading.Condition()

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


@contextmanager
def held() -> Iterator[None]:
    """Keep the worker from starting another job (its current one runs on) while this block
    runs and for HELD_GAP_S after (`turn`); jobs asked for in it are made from then on, or
    from any wait for a kernel."""
    with _paused:
        _pause[0] += 1
    try:
        yield
    finally:
        with _paused:
            _pause[0] = max(0, _pause[0] - 1)  # (0 in a child forked meanwhile)
            _paused.notify_all()


def turn() -> None:
    """Return once the worker may start a job: a thread waits for a kernel, or none holds it
    and none took it within HELD_GAP_S of the last hold's end."""
    with _paused:
        was_held = False
        while not _pause[1]:
            if _pause[0]:
                was_held = True
                _paused.wait()
            elif was_held:
                was_held = False
                _paused.wait(HELD_GAP_S)  # (a waiter's or another release's notify ends it)
            else:
                return


def after_fork() -> None:
    """A forked child: no thread holds or waits (the threads holding were the parent's)."""
    global _paused
    _paused, _pause[:] = threading.Condition(), [0, 0]
