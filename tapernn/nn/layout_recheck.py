"""The "auto" layout re-checked on the real programs (issue 19). A close whole-step trial (the
trial loop leaves out the work around it: (4, 50, 256) f32 read 0.90-0.98 there, where the
T = 50 training step is 1.22x feature-major; layout_rule.judge) is confirmed a few steady
training steps in, when caches are warm: after WARM steps of the first Executable, the model is
traced and compiled once more with those loops in the other layout (the only recompile), that
one runs ALT_WARM untimed steps (numba: its switch call), then ROUNDS interleaved rounds (one
training step of each, the order alternating) are timed in process CPU time at one BLAS thread
(the thread choice paused: blas_tuning; a step during which the numba compiler worked is run
again, up to RETRIES), and the other layout replaces the first only when it
is clearly faster: its best step and the median of the rounds' ratios both at most SWITCH of
the first's. Either way the decision is settled (layout_rule.settle: no re-check again, in this
process or, through the disk cache, in later ones), the loser dropped, and the report notes
what was timed. Both layouts compute the same function (the tests compare to 1e-12)."""

from __future__ import annotations

import time
import weakref
from typing import Any

import numpy as np

from ..backends import background
from ..blas import limiter
from ..blas_tuning import paused
from ..passes import layout_rule

WARM = 3  # training steps of the first Executable before the re-check (caches warm)
ALT_WARM = 2  # untimed steps of the other one first (numba's switch call is the second)
ROUNDS = 4  # interleaved rounds, one timed training step of each
SWITCH = 0.9  # the other layout wins only at <= SWITCH of the first's time (best and median)
RETRIES = 8  # timed steps run again at most (a step the numba compiler overlapped: `timed`)
_clock = time.process_time  # (tests replace it)
COMPILES = [0]  # second compiles made by re-checks (tests: never more than one per decision)
# unsettled re-checks: while one runs, its model holds both layouts' programs (and their buffers)
_PENDING: weakref.WeakSet = weakref.WeakSet()


STEPS = WARM + ALT_WARM + 2 * ROUNDS + 1  # training steps from a model's first to its settling


def pending() -> bool:
    """Whether a live model has a re-check not settled yet. From its (WARM + 1)-th training
    step to its settling, the model holds both layouts' programs and their buffers: more than
    its steady loop and its report; a measurement of the steady loop steps past it."""
    return len(_PENDING) > 0


class Recheck:
    """One signature's re-check, shared by the first Executable and (once made) the other."""

    def __init__(self, first: Any, keys: list):
        self.first, self.keys, self.other = first, list(keys), None
        self.seen = 0  # training forwards of the first before the re-check starts
        self.queue: list = []  # which Executable runs each next step, and whether it is timed
        self.times: dict[int, list[float]] = {}  # id(Executable) -> step seconds, by round
        self.note = ""
        self.retries = 0
        _PENDING.add(self)

    def executable(self, make_other: Any) -> tuple[Any, bool]:
        """(the Executable this training step runs, whether it is timed); `make_other()`
        traces and compiles the other layout (called once)."""
        if self.other is None:
            self.seen += 1
            if self.seen <= WARM:
                return self.first, False
            COMPILES[0] += 1
            with layout_rule.override(layout_rule.flipped(self.keys)):
                self.other = make_other()
            self.other.recheck = self
            self.other.two_plans = None  # ("auto"'s two plans: made for the winner, at settle)
            self.times = {id(self.first): [], id(self.other): []}
            self.queue = [(self.other, False)] * ALT_WARM
            for r in range(ROUNDS):
                pair = (self.first, self.other) if r % 2 == 0 else (self.other, self.first)
                self.queue += [(e, True) for e in pair]
        return self.queue.pop(0) if self.queue else (self.first, False)

    def record(self, exe: Any, seconds: float) -> None:
        """A timed step's seconds; NaN (the numba compiler worked during it: `timed`) queues
        one more timed step of `exe` instead (at most RETRIES in all)."""
        if np.isnan(seconds):
            if self.retries < RETRIES:
                self.retries += 1
                self.queue.append((exe, True))
            return
        self.times[id(exe)].append(seconds)

    def due(self) -> bool:
        return self.other is not None and not self.queue

    def settle(self) -> Any:
        """The winner (its recheck cleared, the decision settled and noted in both)."""
        a, b = self.times[id(self.first)], self.times[id(self.other)]
        pick_first = self.first.options.layout
        pick_other = self.other.options.layout
        n = min(len(a), len(b))
        if n == 0:
            winner, how = self.first, "no complete round timed: the first kept"
        else:
            ratios = [y / x for x, y in zip(a[:n], b[:n]) if x > 0]
            best = min(b) / max(min(a), 1e-12)
            median = float(np.median(ratios)) if ratios else float("inf")
            faster = max(best, median) <= SWITCH
            winner = self.other if faster else self.first
            how = (
                f"{pick_first}-major {min(a) * 1e3:.3g} ms, {pick_other}-major "
                f"{min(b) * 1e3:.3g} ms at best ({best:.2f}x), median ratio {median:.2f}x over "
                f"{n} interleaved training steps (CPU time, 1 BLAS thread); "
                + (
                    f"switched to {pick_other}-major (<= {SWITCH:.2f}x both)"
                    if faster
                    else f"kept {pick_first}-major (the other needs <= {SWITCH:.2f}x both)"
                )
            )
        self.note = f"layout re-check on the real programs: {how}"
        pick = winner.options.layout
        layout_rule.settle(self.keys, pick, f"re-checked on the real training step: {pick}-major")
        for exe in (self.first, self.other):
            exe.recheck = None
            exe.notes.append(self.note)
        _PENDING.discard(self)
        return winner


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    """(fn(*args), its seconds of process CPU) at one BLAS thread with the thread choice paused
    (its arms record nothing): both layouts' re-check steps run alike. NaN seconds when the
    numba compiler worked meanwhile (background.activity: a split loop's step kernels compile
    in the background, and no call waits for them): its CPU time is the process's."""
    with limiter.limit(1), paused():
        before = background.activity()
        start = _clock()
        out = fn(*args)
        seconds = _clock() - start
    if before[2] or background.activity() != before:
        seconds = float("nan")
    return out, seconds
