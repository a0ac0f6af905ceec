"""Building slices and concatenations in a canonical form, so that the stacks the fusion and
hoisting passes create meet their duals under CSE (concat of transposes = transpose of concat;
concat of x[0], x[1], ... = a reshape of x; concat of adjacent slices = one slice)."""

from __future__ import annotations

import itertools

from ..graph import Node
from .rewrite import derive

_RANGES: dict[tuple, tuple[tuple[int, int], ...] | None] = {}


def basic_ranges(n: Node) -> list[tuple[int, int]] | None:
    """Per-axis (start, stop) of a getitem made only of unit-step slices, else None."""
    if n.op != "getitem":
        return None
    index = n.attrs["index"]
    base = n.inputs[0].shape
    key = (index, base)
    try:  # pure in (index, base shape), asked for every slice by several passes
        known = _RANGES[key]
    except KeyError:
        known = _ranges(index, base)
        if len(_RANGES) < 100_000:
            _RANGES[key] = known
    except TypeError:  # an unhashable index
        known = _ranges(index, base)
    return None if known is None else list(known)


def _ranges(index: tuple, base: tuple) -> list[tuple[int, int]] | None:
    if Ellipsis in index:  # (a cell's `gx[..., :H]`: full slices over the axes it stands for)
        k = index.index(Ellipsis)
        rest = index[k + 1 :]
        if Ellipsis in rest:
            return None
        index = index[:k] + (("s", None, None, None),) * (len(base) - len(index) + 1) + rest
    if len(index) > len(base):
        return None
    out = []
    for k, dim in enumerate(base):
        item = index[k] if k < len(index) else ("s", None, None, None)
        if not (isinstance(item, tuple) and item[0] == "s" and item[3] in (None, 1)):
            return None
        start, stop, _ = slice(item[1], item[2]).indices(dim)
        out.append((start, max(start, stop)))
    return tuple(out)


def _ranges_node(like: Node, base: Node, ranges: list[tuple[int, int]]) -> Node:
    if all(r == (0, d) for r, d in zip(ranges, base.shape)):
        return base
    index = tuple(("s", a, b, None) for a, b in ranges)
    while index and index[-1] == ("s", 0, base.shape[len(index) - 1], None):
        index = index[:-1]
    return derive(like, "getitem", (base,), index=index)


def slice_axis(like: Node, x: Node, axis: int, start: int, stop: int) -> Node:
    """x[..., start:stop, ...] along `axis`, composed with x's own slicing when x is a slice."""
    inner = basic_ranges(x)
    if inner is not None:
        ranges = list(inner)
        a, _ = ranges[axis]
        ranges[axis] = (a + start, a + stop)
        return _ranges_node(like, x.inputs[0], ranges)
    ranges = [(0, d) for d in x.shape]
    ranges[axis] = (start, stop)
    return _ranges_node(like, x, ranges)


def make_concat(like: Node, pieces: list[Node], axis: int) -> Node:
    if len(pieces) == 1:
        return pieces[0]
    if all(p.op == "transpose" and p.attrs["axes"] == (1, 0) for p in pieces):
        inner = make_concat(like, [p.inputs[0] for p in pieces], 1 - axis)
        return derive(like, "transpose", (inner,), axes=(1, 0))
    swapped = _swap_nested(like, pieces, axis)
    if swapped is not None:
        return swapped
    merged = _rows_of_one_base(like, pieces) if axis == 0 else None
    if merged is None:
        merged = _adjacent_slices(like, pieces, axis)
    if merged is None:
        runs = _merge_runs(like, pieces, axis)
        if len(runs) < len(pieces):
            return make_concat(like, runs, axis)
    return merged if merged is not None else derive(like, "concat", pieces, axis=axis)


def _merge_runs(like: Node, pieces: list[Node], axis: int) -> list[Node]:
    """The pieces with each run of adjacent slices of one base replaced by one slice:
    concat(a[:, 0:4], a[:, 4:8], b) == concat(a[:, 0:8], b)."""
    out = [pieces[0]]
    for p in pieces[1:]:
        joined = _adjacent_slices(like, [out[-1], p], axis) if p.op == "getitem" else None
        if joined is not None:
            out[-1] = joined
        else:
            out.append(p)
    return out


def _rows_of_one_base(like: Node, pieces: list[Node]) -> Node | None:
    """concat(x[t0], x[t0+1], ..., axis=0) == reshape(x[t0:t1], (n * rows, ...))."""
    base = pieces[0].inputs[0] if pieces[0].op == "getitem" else None
    if base is None or base.ndim < 3:
        return None
    ts = []
    for p in pieces:
        if p.op != "getitem" or p.inputs[0] is not base:
            return None
        index = p.attrs["index"]
        if not (len(index) == 1 and isinstance(index[0], int)):
            return None
        ts.append(index[0] % base.shape[0])
    if ts != list(range(ts[0], ts[0] + len(ts))):
        return None
    block = slice_axis(like, base, 0, ts[0], ts[-1] + 1)
    shape = (len(ts) * base.shape[1],) + base.shape[2:]
    return derive(like, "reshape", (block,), shape=shape)


def _adjacent_slices(like: Node, pieces: list[Node], axis: int) -> Node | None:
    ranges = [basic_ranges(p) for p in pieces]
    if any(r is None for r in ranges) or len({p.inputs[0] for p in pieces}) != 1:
        return None
    for prev, cur in itertools.pairwise(ranges):
        same_elsewhere = all(a == b for k, (a, b) in enumerate(zip(prev, cur)) if k != axis)
        if not same_elsewhere or prev[axis][1] != cur[axis][0]:
            return None
    merged = list(ranges[0])
    merged[axis] = (ranges[0][axis][0], ranges[-1][axis][1])
    return _ranges_node(like, pieces[0].inputs[0], merged)


def _swap_nested(like: Node, pieces: list[Node], axis: int) -> Node | None:
    """concat_1(concat_0(p_k0, p_k1, ...) for k) == concat_0(concat_1(p_0t, p_1t, ...) for t):
    column blocks of row stacks are written as row blocks of column stacks, so the stack of
    per-step gate gradients [dz_i dz_f ...] is built one way only and CSE shares it."""
    if axis != 1 or not all(p.op == "concat" and p.attrs["axis"] == 0 for p in pieces):
        return None
    parts = [p.inputs for p in pieces]
    if len({len(ps) for ps in parts}) != 1:
        return None
    rows = [[ps[j] for ps in parts] for j in range(len(parts[0]))]
    if any(len({r.shape[0] for r in row}) != 1 for row in rows):
        return None
    return make_concat(like, [make_concat(row[0], row, 1) for row in rows], 0)
