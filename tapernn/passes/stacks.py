"""Sharing stacks: a concat whose pieces are a run of another concat's pieces is a slice of it,
and a stack over steps of such runs (or of single pieces) is a column slice of the wider stack.
A GRU's backward builds [dz_r dz_z]_t for the recurrent GEMM and [dz_r dz_z dz_n]_t for the
input GEMM, then stacks of each over time (and of dz_n alone) for the weight gradients: three
copies of the same values. After this pass there is one stack and views of it."""

from __future__ import annotations

from ..graph import Graph, Node
from .concat import basic_ranges, slice_axis
from .rewrite import substitute


def share_stacks(graph: Graph) -> Graph:
    graph = substitute(graph, _runs(graph))
    return substitute(graph, _column_stacks(graph))


def _concats(graph: Graph):
    return [n for n in graph.nodes if n.op == "concat" and len(n.inputs) >= 2]


def _offsets(c: Node) -> list[int]:
    axis = int(c.attrs["axis"]) % c.ndim
    out, start = [], 0
    for p in c.inputs:
        out.append(start)
        start += p.shape[axis]
    return out + [start]


def _reaches(x: Node, c: Node, subst: dict[Node, Node]) -> bool:
    """Whether x is computed from c once `subst` (the replacements chosen so far) is applied:
    replacing c by a view of x must not make c depend on itself."""
    stack, seen = [x], set()
    while stack:
        n = stack.pop()
        if n is c:
            return True
        if n in seen:
            continue
        seen.add(n)
        stack.extend((subst[n],) if n in subst else n.inputs)
    return False


def _runs(graph: Graph) -> dict[Node, Node]:
    """{concat: slice of a wider concat along the same axis whose pieces it repeats}."""
    holders: dict[Node, list[Node]] = {}
    for d in _concats(graph):
        for p in dict.fromkeys(d.inputs):
            holders.setdefault(p, []).append(d)
    subst: dict[Node, Node] = {}
    for c in _concats(graph):
        axis = int(c.attrs["axis"]) % c.ndim
        k = len(c.inputs)
        for d in holders.get(c.inputs[0], ()):
            if (
                d is c
                or len(d.inputs) <= k
                or int(d.attrs["axis"]) % d.ndim != axis
                or d.ndim != c.ndim
                or d in subst
            ):
                continue
            starts = [j for j in range(len(d.inputs) - k + 1) if d.inputs[j : j + k] == c.inputs]
            if not starts or _reaches(d, c, subst):
                continue
            offsets = _offsets(d)
            subst[c] = slice_axis(c, d, axis, offsets[starts[0]], offsets[starts[0] + k])
            break
    return subst


def _column_stacks(graph: Graph) -> dict[Node, Node]:
    """{row stack of column blocks: the same column slice of a row stack of their wholes}."""
    stacks: dict[tuple, Node] = {}
    where: dict[Node, list[tuple[Node, int, int]]] = {}  # piece -> (column concat, start, stop)
    for n in _concats(graph):
        if n.ndim == 2 and int(n.attrs["axis"]) % 2 == 0:
            stacks.setdefault(n.inputs, n)
        if n.ndim == 2 and int(n.attrs["axis"]) % 2 == 1:
            offsets = _offsets(n)
            for j, p in enumerate(n.inputs):
                where.setdefault(p, []).append((n, offsets[j], offsets[j + 1]))
    subst: dict[Node, Node] = {}
    for s in _concats(graph):
        if s.ndim != 2 or int(s.attrs["axis"]) % 2 != 0:
            continue
        for wholes, cols in _candidates(s.inputs, where):
            stack = stacks.get(wholes)
            if stack is None or stack is s or _reaches(stack, s, subst):
                continue
            subst[s] = slice_axis(s, stack, 1, *cols)
            break
    return subst


def _candidates(pieces: tuple, where: dict):
    """(wholes, columns) such that every piece is those columns of its whole, in step order."""
    first = pieces[0]
    options = []
    if first.op == "getitem" and _cols(first) is not None:
        options.append(
            (
                _cols(first),
                lambda p: p.inputs[0] if p.op == "getitem" and _cols(p) == _cols(first) else None,
            )
        )
    for whole, a, b in where.get(first, ()):
        options.append(
            (
                (a, b),
                lambda p, a=a, b=b: next(
                    (w for w, x, y in where.get(p, ()) if (x, y) == (a, b)), None
                ),
            )
        )
    for cols, whole_of in options:
        wholes = tuple(whole_of(p) for p in pieces)
        if all(w is not None for w in wholes):
            yield wholes, cols


def _cols(p: Node) -> tuple[int, int] | None:
    """The column range of a getitem taking all rows and a unit-step column slice."""
    ranges = basic_ranges(p)
    if ranges is None or len(ranges) != 2 or ranges[0] != (0, p.inputs[0].shape[0]):
        return None
    return ranges[1]
