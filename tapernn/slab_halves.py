"""A loop's time-batched input computed into its own rows (PlanOptions.xs_in_slab, regions.py)
against its batch split (scan_split.py, issue 19): the two batch halves run at once, so a half's
xs rows must not lie in the other half's ys rows (scan_split.SplitRunner._apart refuses such
a call at run time: the whole loop runs unsplit). A loop whose step writes several ys one after
another (a masked loop, Sequencer lengths=: [y | gates...] a step) has no placement of its
(T * B, w) projection that keeps the halves apart -- each ys is a (B, w_j) block of the step's
rows, half 1's rows in the second half of every block -- so the planner leaves such an input
out of the slab (its own buffer, in the compile report's bytes) when the loop may split."""

from __future__ import annotations

import math

import numpy as np

from .graph import Node
from .plan_options import LOOP_MAX_SIZE, SPLIT_MIN_ROWS, PlanOptions


def split_rows(s: Node, options: PlanOptions) -> int | None:
    """The first batch half's row count (`halves`) when loop `s` may run split under
    `options`: a backend that may be numba, batch_split not "off", a loop the Python runner runs
    (a body value over LOOP_MAX_SIZE elements: backends/numba_loop.py), batch-major (every ys
    in the rows (B, w) with the carries' B), halves of >= SPLIT_MIN_ROWS rows under "auto";
    else None."""
    body, nc = s.attrs.get("body"), s.attrs.get("n_carry")
    if body is None or nc is None or options.backend == "numpy" or options.batch_split == "off":
        return None
    batch = body.inputs[0].shape[0] if body.inputs and body.inputs[0].shape else 0
    moved = {j for j, _ in s.attrs.get("shifted", ())}
    kept = [o.shape for j, o in enumerate(body.outputs[nc:]) if j not in moved]
    least = SPLIT_MIN_ROWS if options.batch_split == "auto" else 1
    largest = max((math.prod(n.shape) for n in body.nodes), default=0)
    first, second = halves(batch)
    if largest <= LOOP_MAX_SIZE or second < least or not kept:
        return None
    if any(len(shape) != 2 or shape[0] != batch for shape in kept):
        return None
    return first


def halves(batch: int) -> tuple[int, int]:
    """A split loop's two row counts (scan_split): the caller's half first (the larger, if
    odd)."""
    return batch - batch // 2, batch // 2


def crosses(slab: np.ndarray, x: np.ndarray, s: Node, start: int, row: int, b0: int) -> bool:
    """Whether on the dummy `slab` a batch half's rows of operand `x` ((T, B, ...): the loop's
    xs as it reads them) share memory with the other half's rows of any ys in loop `s`'s rows
    (`row` elements a step from `start`, scan_ir.ys_places)."""
    body, nc, length = s.attrs["body"], s.attrs["n_carry"], s.attrs["length"]
    if x.ndim < 2 or x.shape[1] <= b0:
        return True
    moved = {j for j, _ in s.attrs.get("shifted", ())}
    rows = slab[start : start + length * row].reshape(length, row)
    at = 0
    for j, o in enumerate(body.outputs[nc:]):
        if j in moved:
            continue
        y = rows[:, at : at + o.size].reshape(length, *o.shape)
        at += o.size
        if halves_meet(x, y, ((0, b0), (b0, x.shape[1]))):
            return True
    return False


def halves_meet(x: np.ndarray, y: np.ndarray, rows: tuple) -> bool:
    """Whether one batch half's rows (axis 1; `rows` ((lo0, hi0), (lo1, hi1))) of `x` share
    memory with the other half's of `y` (too hard to tell: they do)."""
    (lo0, hi0), (lo1, hi1) = rows
    for a, b in ((x[:, lo0:hi0], y[:, lo1:hi1]), (x[:, lo1:hi1], y[:, lo0:hi0])):
        try:
            if np.shares_memory(a, b, max_work=1 << 16):
                return True
        except np.exceptions.TooHardError:
            return True
    return False
