"""Views of a loop's slab that its runner (scan_run.make_runner) makes per call: the ys
(length, *shape) arrays whose iteration gives each step's rows, the final carries' places, and
the ys row slices a body takes each step, split once per call instead (split_row_slices)."""

from __future__ import annotations

import math
import re

import numpy as np

from .errors import TapernnError
from .graph import Graph
from .scan_ir import offsets, slab_sizes, ys_places


def ys_views(body: Graph, nc: int, attrs: dict, dtype: np.dtype):
    """(length, *shape) views of the slab per ys (laid out by scan_ir.ys_places: the rows of
    the ys not shifted from `c`, `y` apart, then each shifted ys's own block), then the
    initial-carry row of each shifted ys; a 0-d ys as (length, 1), so that its row is an array
    the body can write (a (length,) array's row would be a NumPy scalar)."""
    length, shifted = attrs["length"], attrs.get("shifted", ())
    size, places, inits = ys_places(body, nc, length, attrs["reverse"], shifted)
    c, _ = slab_sizes(body, nc)
    shapes = [o.shape or (1,) for o in body.outputs[nc:]]
    moved = [j for j, _ in shifted]
    kept = [j for j in range(len(shapes)) if j not in moved]
    width = sum(math.prod(shapes[j]) for j in kept)
    specs: list = [None] * len(shapes)
    for j, spec in zip(kept, view_specs(c, [shapes[j] for j in kept], length, width, dtype)):
        specs[j] = spec
    for j in moved:
        (specs[j],) = view_specs(places[j][0], [shapes[j]], length, places[j][1], dtype)
    for k, at in inits:
        specs += view_specs(at, [body.outputs[k].shape], None, 0, dtype)
    views = views_of(specs, dtype)
    # each view is a strided window into the slab, so it is a view whatever the slab's values:
    # checked once here (np.empty touches no memory), not on every loop call
    probe = np.empty(size, dtype)
    if length and not all(np.shares_memory(v, probe) for v in views(probe)):
        raise TapernnError("scan: internal error, a ys view of the slab is a copy")
    return views


def carry_views(shapes: list[tuple], dtype: np.dtype):
    return views_of(view_specs(0, shapes, None, 0, dtype), dtype)


def view_specs(start: int, shapes: list[tuple], length: int | None, row: int, dtype: np.dtype):
    """Per shape (its view's shape, byte offset, strides) in a slab laid out from `start` one
    after another (offsets): `shape` itself or, given `length`, (length, *shape) with rows
    `row` elements apart."""
    item, specs = dtype.itemsize, []
    rows = () if length is None else (length,)
    steps = () if length is None else (row * item,)
    for (a, _), s in zip(offsets(shapes), shapes):
        inner = tuple(int(v) for v in np.empty(s, dtype).strides)
        specs.append(((*rows, *s), (start + a) * item, (*steps, *inner)))
    return specs


def views_of(specs: list, dtype: np.dtype):
    """slab -> its views `specs` ((shape, byte offset, strides) each), each made by ONE
    np.ndarray over the slab's buffer (~0.25 us; splitting a stacked view by NumPy's
    iteration or slicing and reshaping cost 2-4x that per view, every loop call)."""
    nd, dtype, specs = np.ndarray, np.dtype(dtype), tuple(specs)
    kept: list = []  # [out, its views]: `out` is the caller's buffer, the same every call

    def views(slab: np.ndarray, given: bool = False) -> list:
        # (the slab is C-contiguous and of `dtype`: the runner allocates it or checks `out`)
        if given and kept and kept[0] is slab:
            return kept[1]
        out = [nd(shape, dtype, slab, offset, strides) for shape, offset, strides in specs]
        if given:  # (a buffer the caller's program holds anyway: keeping it costs no memory)
            kept[:] = [slab, out]
        return out

    return views


def split_row_slices(statements: list[str], bound: dict, ys_rows: dict[str, str]):
    """(statements, splits): the inlined body's lines `o<k> = w<j>[i<m>]` -- a basic slice of a
    ys row, taken each step (~0.17 us each) -- replaced by `pass` (the lines keep their numbers:
    a failing step's node is found by line), and per such line (o<k>, the ys array's name, the
    index with a leading slice over the steps): the runner takes ONE view of the whole ys per
    call and its iteration hands each step its slice (~0.07 us). `ys_rows`: row name -> ys
    array name."""
    out, splits = [], []
    for line in statements:
        m = _ROW_SLICE.fullmatch(line)
        index = bound.get(m.group(3)) if m else None
        if m and m.group(2) in ys_rows and _basic(index):
            index = index if isinstance(index, tuple) else (index,)
            splits.append((m.group(1), ys_rows[m.group(2)], (slice(None), *index)))
            out.append("    pass")
            continue
        out.append(line)
    return out, splits


_ROW_SLICE = re.compile(r"    (o\d+) = (w\d+)\[(i\d+)\]")


def _basic(index) -> bool:
    """A basic index of slices and ints (a view, the same axes for every row)."""
    parts = index if isinstance(index, tuple) else (index,)
    return index is not None and all(
        isinstance(p, slice) or (isinstance(p, int) and not isinstance(p, bool)) for p in parts
    )
