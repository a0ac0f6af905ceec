"""The packed loop weights' panels (scan_pack.py) made in the weight's zeroed `.grad`, as the
NumPy backend's transposed weight copy is (codegen's Program.scratch_slots): a loop prologue's
`pack_panels` result gets a slot of the prologue program's `dest` (`pack_slots`), the loop's
lowering (scan_run.lower_scan) records the prologue in its LoweringContext, and the top-level
program maps each slot to the parameter whose data the loop packs (`loop_slots`: (input
position, rows) -> (the prologue's dest list, slot, the panels' node, rows of its `.grad` or
None, scan node key)), in rows of its `.grad` no other slot of the call uses (`_place`: the
LSTM forward's transposed copy of rows 4H:8H takes those rows, its panels rows 0:4H).
nn/packing.Packing.scratch_into lends those rows when they hold only zeros and have the
panels' size, dtype and layout, apart from every argument and every range lent before. The
loop's runner zeroes the panels when its loop ends -- but in a backward that then computes that
whole `.grad` over them (`Lent.left`: left as they are; zeroed should the call raise first) --
and release_scratch does not fill them again after a forward whose loops ended."""

from __future__ import annotations

from typing import Any

import numpy as np

from .graph import Graph, Node


class Lent(list):
    """A loop prologue's `dest` (its `pack_panels` slots: the `.grad` rows lent, or None) and
    `left`: the slots whose lent rows lie within an array the top-level backward computes a
    gradient into after the loop, every element of it (Packing.compute_into: a ufunc's out=,
    and loop_slots lends no loop of a backward writing such an array before it) -- the loop's
    runner need not zero those panels when it ends (skipped: a 1 MiB pass at (32, 50, 256)
    f32); were the call to raise before that write, Packing.release zeroes them."""

    __slots__ = ("left",)

    def __init__(self, n: int):
        super().__init__([None] * n)
        self.left: set[int] = set()

    def unzeroed(self, ended: bool) -> list:
        """The lent arrays a loop's runner zeroes when the loop is over: all, or when it
        `ended` (did not raise) all but those in `left`."""
        return [a for s, a in enumerate(self) if a is not None and not (ended and s in self.left)]

    def zero(self, ended: bool) -> None:
        for a in self.unzeroed(ended):
            a.fill(0)


def pack_slots(graph: Graph, plan: Any, least: int) -> tuple[dict[Node, int], dict[int, int]]:
    """A loop prologue's (a nested program's) `pack_panels` outputs of at least `least` bytes,
    each in storage of its own made per call: (node -> slot of the program's `dest`, output
    position -> slot)."""
    into: dict[Node, int] = {}
    by_position: dict[int, int] = {}
    for k, n in enumerate(graph.outputs):
        if (
            n.op != "pack_panels"
            or graph.outputs.count(n) != 1
            or n.nbytes < least
            or n not in plan.fresh
            or plan.storage.get(n) is not n
            or n in plan.placed
            or plan.copied(n, False)
        ):
            continue
        into[n] = by_position[k] = len(into)
    return into, by_position


def param_rows(v: Node, position: dict[Node, int]) -> tuple[int, tuple | None] | None:
    """(input position, rows) of the parameter (or rows a:b of a parameter block) whose data
    the top-level value `v` is, through a transpose; None otherwise."""
    if v.op == "transpose":
        v = v.inputs[0]
    rows = None
    if v.op == "getitem" and len(v.attrs["index"]) == 1:
        kind, a, b, step = v.attrs["index"][0]
        if kind != "s" or step not in (None, 1):
            return None
        v = v.inputs[0]  # (W[D:], W[:D]: open ends, as any slice, made row numbers)
        rows = slice(a, b).indices(v.shape[0])[:2]
    if v not in position or v.attrs.get("kind") != "param":
        return None
    return position[v], rows


def _size(graph: Graph, j: int, rows: tuple | None) -> int:
    """Elements of input `j` (or of its rows a:b)."""
    shape = graph.inputs[j].shape
    first = shape[0] if rows is None else min(rows[1], shape[0]) - rows[0]
    return first * int(np.prod(shape[1:], dtype=np.int64))


def _span(graph: Graph, j: int, rows: tuple | None) -> tuple[int, int]:
    """Rows (a, b) of input `j` that `rows` (None: all of them) are."""
    n = graph.inputs[j].shape[0]
    return (0, n) if rows is None else (rows[0], min(rows[1], n))


def free_rows(n_rows: int, need: int, busy: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The first rows (a, a + need) of 0:n_rows that overlap no range of `busy`; None if
    none."""
    for a in sorted({0, *(b for _, b in busy)}):
        if a + need <= n_rows and all(a + need <= lo or hi <= a for lo, hi in busy):
            return a, a + need
    return None


def _place(graph: Graph, found: list, taken: dict[int, tuple]) -> dict[tuple, tuple]:
    """(input position, rows) -> its candidate, each candidate (j, own rows, entry) in rows of
    input j's `.grad` no other slot of the call uses (`taken`: Program.scratch_slots, the
    forward's transposed copies): its own rows when free, else the first free rows of its
    size (hpeak10: the LSTM forward packs the transposed copy of rows 4H:8H of its block,
    which takes those rows of the `.grad`; its panels take rows 0:4H). Two candidates packing
    overlapping rows of one input (the same weight packed twice) get none."""
    busy: dict[int, list] = {}
    for j, (_, _, rows) in taken.items():
        busy.setdefault(j, []).append(_span(graph, j, rows))
    spans = [(j, _span(graph, j, rows)) for j, rows, _ in found]
    twice = {
        k
        for k, (j, (a, b)) in enumerate(spans)
        for m, (i, (c, d)) in enumerate(spans)
        if k != m and i == j and a < d and c < b
    }
    out: dict[tuple, tuple] = {}
    later = []
    for k, (j, rows, entry) in enumerate(found):
        if k in twice:
            continue
        span = spans[k][1]
        if any(span[0] < hi and lo < span[1] for lo, hi in busy.get(j, ())):
            later.append((j, span, entry))
            continue
        busy.setdefault(j, []).append(span)
        out[(j, rows)] = (*entry[:3], rows, *entry[3:])
    for j, span, entry in later:
        shape = graph.inputs[j].shape
        width = int(np.prod(shape[1:], dtype=np.int64))
        if entry[2].size % width:
            continue
        rows = free_rows(shape[0], entry[2].size // width, busy.get(j, []))
        if rows is not None:
            busy.setdefault(j, []).append(rows)
            out[(j, rows)] = (*entry[:3], rows, *entry[3:])
    return out


def loop_slots(
    graph: Graph, recorded: list, taken: dict[int, tuple], plan: Any, dest_slots: dict[int, int]
) -> dict[tuple, tuple]:
    """(input position of a parameter, rows of its `.grad` or None) -> (dest list, slot,
    panels node, those rows, scan node key) for each packed weight a loop of the top-level
    `graph` packs from a parameter's data (itself, a transpose or a transposed copy of it or
    of rows a:b of a block). `recorded`: (id of a scan node's attrs, its prologue Program)
    from the loops' lowering; a prologue shared by two loops, a weight packed twice, or panels
    not of its size (padded past its columns) get none; nor does a loop of a backward that
    writes any output into a caller's array (`dest_slots`: Packing.compute_into's `.grad`)
    before the loop has run (the loop's runner zeroes the panels when the loop ends:
    scan_run.make_runner). `taken`: the transposed copies' slots (input position -> (slot,
    node, rows)); the panels go into other rows of that `.grad` (`_place`)."""
    pos = {n: k for k, n in enumerate(graph.nodes)}
    first_write = [
        plan.alloc_at.get(st, pos.get(st, -1))
        for st in (plan.storage.get(graph.outputs[k], graph.outputs[k]) for k in dest_slots)
    ]
    by_key = dict(recorded)
    uses: dict[int, int] = {}
    for _, prog in recorded:
        uses[id(prog)] = uses.get(id(prog), 0) + 1
    position = {n: k for k, n in enumerate(graph.inputs)}
    found: list = []
    for n in graph.nodes:
        prog = by_key.get(id(n.attrs)) if n.op == "scan" else None
        if prog is None or uses[id(prog)] != 1 or any(w <= pos[n] for w in first_write):
            continue
        first = n.attrs["n_carry"] + n.attrs["n_xs"]
        inputs = prog.graph.inputs
        for k, s in prog.pack_slots.items():
            pack = prog.graph.outputs[k]
            w = pack.inputs[0]
            if w not in inputs or first + inputs.index(w) >= len(n.inputs):
                continue
            v = n.inputs[first + inputs.index(w)]
            found_at = param_rows(v.inputs[0] if v.op == "transpose_copy" else v, position)
            if found_at is None or _size(graph, *found_at) != pack.size:
                continue  # (panels padded past the weight's columns: larger than its .grad)
            found.append((*found_at, (prog.dest, s, pack, id(n.attrs))))
    return _place(graph, found, taken)
