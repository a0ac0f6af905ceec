"""A split loop's packed weight made by both threads inside the halves' own hand-off (issue 19,
branch hcallF): a loop prologue that is one `pack_panels` of an invariant (scan_pack.py; the
packed step weight, 0.2-0.7 ms of the caller's alone per loop call at (32, 50, 256)) is
packed in two halves of its panels, the caller's before its half loop and the worker's before
its own, each half loop starting once both halves are packed (a flag and an Event each). No
hand-off of its own: scan_columns.pack's two halves pay the worker's wake-up for the pack
alone (slower below 12 MiB, BENCHMARKS.md "h512b"); here the worker wakes for its half loop
anyway. Each panel is made by the same
pack code as the whole weight's (a column slice of the weight into a slice of the panels,
packed.pack_panels): the same bits."""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from . import aligned, own_threads, scan_columns
from .backends import packed
from .scan_pack import _pack_forward

# the prologue program's text (codegen): one pack of an invariant, returned alone
_PACK = re.compile(r"^    (v\d+) = f_pack_panels\(a(\d+), nr=(\w+)(?:, out=(_dest\[0\]|None))?\)$")
CALLS = [0]  # loop calls whose weight both threads packed (tests)
ENABLED = [True]  # (off: the prologue packs on the caller, as before -- tests, A/B tools)


class Pack:
    """How a prologue packs: `inv` its invariant's position, `nr` the panels' width, `dest`
    the program's list whose slot 0 lends the panels' memory (pack_scratch.py), or None."""

    def __init__(self, inv: int, nr: int, dest: list | None):
        self.inv, self.nr, self.dest = inv, nr, dest

    def panels(self, w: np.ndarray) -> np.ndarray | None:
        """Where the panels of `w` go (the lent slot, else new, as pack_panels' own), or None
        when `w` is not a 2-D weight of two panels or more (the prologue runs then)."""
        if getattr(w, "ndim", 0) != 2 or -(-w.shape[1] // self.nr) < 2:
            return None
        shape = (-(-w.shape[1] // self.nr), w.shape[0], self.nr)
        out = self.dest[0] if self.dest is not None else None
        if out is None:
            return aligned.empty(shape, w.dtype)
        return out if out.shape == shape and out.dtype == w.dtype else None


def plan(source: str | None, fn: Any) -> Pack | None:
    """The prologue program `fn` (its text `source`) as a Pack, or None when it is anything
    else than one pack_panels of an invariant (the op's forward: scan_columns.pack)."""
    if not ENABLED[0]:
        return None
    lines = (source or "").strip().split("\n")
    m = _PACK.match(lines[1]) if len(lines) == 3 else None
    kw = getattr(fn, "__kwdefaults__", None) or {}
    if m is None or lines[2].strip() != f"return ({m.group(1)},)":
        return None
    if kw.get("f_pack_panels") not in (packed.pack_panels, scan_columns.pack, _pack_forward):
        return None
    lent = m.group(4) == "_dest[0]"
    nr, dest = kw.get(m.group(3)), kw.get("_dest") if lent else None
    if not isinstance(nr, int) or (lent and not isinstance(dest, list)):
        return None
    return Pack(int(m.group(2)), nr, dest)


def run(w: np.ndarray, out: np.ndarray, nr: int, first: Any, second: Any) -> tuple:
    """(first(), second()): the two halves' loops, `second` on the worker, each after both
    halves of the panels `out` of `w` are packed (the caller's panels first, the worker's
    the rest)."""
    h = out.shape[0] // 2
    flags = np.zeros(16, np.int64)  # (each side's word on a cache line of its own: 1 packed)
    events = (threading.Event(), threading.Event())

    def far():
        try:
            packed.pack_panels(w[:, h * nr :], out[h:], nr)
            flags[8] = 1
        finally:  # (set either way, 2: not packed -- the caller never waits for good; the
            # failure is raised by the join below, neither half loop run)
            flags[8] = flags[8] or 2
            events[1].set()
        return second() if _wait(flags, 0, events[0]) else None

    CALLS[0] += 1
    future = own_threads.submit(far)
    try:
        try:
            packed.pack_panels(w[:, : h * nr], out[:h], nr)
            flags[0] = 1
        finally:
            flags[0] = flags[0] or 2  # (2: not packed; the worker's half then does not run)
            events[0].set()
        value = first() if _wait(flags, 8, events[1]) else None
    finally:
        other = future.result()
    return value, other


def _wait(flags: np.ndarray, at: int, event: threading.Event) -> bool:
    """Whether the other side's word flags[at] says packed (1), once it is set (its Event: a
    spin of up to 2 ms first, as own_threads' join may, made the worker's start late more
    often at load 15-16 -- 10-11 of 40 steps by > 0.5 ms against 3-6 blocking, main's loop
    halves 2-7; branch hcallF's notes)."""
    if not flags[at]:
        event.wait()
    return int(flags[at]) == 1
