"""A split loop's packed weight made by both threads inside the halves' own hand-off (issue 19,
branch hcallF): a loop prologue that is one `pack_panels` of an invariant (scan_pack.py; the
packed step weight, 0.2-0.7 ms of the caller's alone per loop call at (32, 50, 256)) is
packed in two halves of its panels, the caller's before its half loop and the worker's before
its own, each half loop starting once both halves are packed (own_threads.both_after). No
hand-off of its own: scan_columns.pack's two halves pay the worker's wake-up for the pack
alone (slower below 12 MiB, BENCHMARKS.md "h512b"); here the worker wakes for its half loop
anyway. Each panel is made by the same
pack code as the whole weight's (a column slice of the weight into a slice of the panels,
packed.pack_panels): the same bits."""

from __future__ import annotations

import re
from functools import partial
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
    the rest: own_threads.both_after)."""
    h = out.shape[0] // 2
    CALLS[0] += 1
    return own_threads.both_after(
        (
            partial(packed.pack_panels, w[:, : h * nr], out[:h], nr),
            partial(packed.pack_panels, w[:, h * nr :], out[h:], nr),
        ),
        (first, second),
    )
