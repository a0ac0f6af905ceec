"""One ys for a loop's gate gradients: when the graph concatenates a scan's (R, w) ys stacks
side by side ((T*R, w) each, along the columns: an LSTM's [dz_i dz_f dz_g dz_o] for the dx
and weight-gradient GEMMs after its reverse loop), the body returns them as one (R, sum w)
ys instead, in that order, so the concat is a view of the slab (no (T*B, 4H) copy; the body's
own per-step concat of the same pieces becomes that ys, written into the slab row)."""

from __future__ import annotations

import itertools
import weakref

from ..graph import Graph, Node
from .rewrite import derive, substitute
from .simplify import scatter_block
from .slab import (
    ALL,
    _columns,
    carry_view,
    layout,
    relayout,
    rows_of,
    slice_bounds,
    spans,
    with_body,
    ys_view,
)

_BODIES: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()


def merge_concatenated_ys(graph: Graph) -> Graph:
    """Every scan whose ys are all (R, w_j) and some of them concatenated (as (T*R, w_j)
    stacks, along axis 1) after the loop: one merged ys, the concat's pieces first."""
    subst: dict[Node, Node] = {}
    done: set[Node] = set()
    for c in graph.nodes:
        found = _concat_of_ys(c)
        if found is None or found[0] in done:
            continue
        s, order = found
        done.add(s)
        subst.update(_merge(graph, s, order))
    return substitute(graph, subst) if subst else graph


def ys_piece(p: Node) -> tuple[Node, int] | None:
    """(scan, j) when p is the (T*R, w_j) stack of scan's ys j (reshapes of its column block
    of the slab rows; a reshape chain keeps the element order), else None."""
    q = p
    while q.op == "reshape":
        q = q.inputs[0]
    ab = _columns(q) if q.op == "getitem" else None
    if ab is None or q.inputs[0].op != "reshape":
        return None
    r = q.inputs[0]
    u = r.inputs[0]
    if u.op != "getitem" or u.inputs[0].op != "scan" or u.inputs[0].attrs.get("shifted"):
        return None
    s = u.inputs[0]
    _, ys, c, width = layout(s)
    t = s.attrs["length"]
    if slice_bounds(u) != (c, c + t * width) or r.shape != (t, width):
        return None
    at = {span: j for j, span in enumerate(spans(ys))}
    j = at.get(ab)
    if j is None or len(ys[j]) != 2 or p.shape != (t * ys[j][0], ys[j][1]):
        return None
    return s, j


def _concat_of_ys(c: Node) -> tuple[Node, tuple[int, ...]] | None:
    """(scan, its ys indices in the concat's order) for a 2-D concat along the columns of >= 2
    distinct ys stacks of one scan whose ys are all (R, w) with one R, else None."""
    if c.op != "concat" or c.ndim != 2 or int(c.attrs["axis"]) % 2 != 1 or len(c.inputs) < 2:
        return None
    found = [ys_piece(p) for p in c.inputs]
    if any(f is None for f in found) or len({f[0] for f in found}) != 1:
        return None
    s = found[0][0]
    order = tuple(f[1] for f in found)
    _, ys, _, _ = layout(s)
    if len(set(order)) != len(order) or len({(len(y), y[0]) for y in ys}) != 1:
        return None
    if s.attrs["n_carry"] + len(ys) != len(s.attrs["body"].outputs):
        return None
    return s, order


def merged_body(body: Graph, nc: int, order: tuple[int, ...]) -> Graph:
    """The body returning its ys as one (R, sum w) concat in `order` (the rest after, in
    their order); made once per (body, order), so its compiled program is cached."""
    cache = _BODIES.setdefault(body, {})
    if order not in cache:
        ys = body.outputs[nc:]
        pieces = [ys[j] for j in order] + [y for j, y in enumerate(ys) if j not in order]
        cat = derive(pieces[0], "concat", pieces, axis=1)
        nodes = list(body.nodes) + [cat]
        cache[order] = Graph(nodes, body.inputs, list(body.outputs[:nc]) + [cat], body.meta)
    return cache[order]


def _merge(graph: Graph, s: Node, order: tuple[int, ...]) -> dict[Node, Node]:
    """Substitutions: the merged scan's views for the old slab's readers; a concat of
    merged pieces in merged order is the view of their columns (one in another order stays a
    concat, of views: gate fusion orders the weight-gradient concat like the dx one)."""
    nc = s.attrs["n_carry"]
    t = s.attrs["length"]
    _, ys, _, _ = layout(s)
    full = list(order) + [j for j in range(len(ys)) if j not in order]
    new = with_body(s, merged_body(s.attrs["body"], nc, tuple(order)))
    stack = derive(s, "reshape", (_rows_block(new),), shape=(t, ys[0][0], sum(y[1] for y in ys)))
    start, cols = 0, {}
    for j in full:
        cols[j] = (start, start + ys[j][1])
        start += ys[j][1]
    stacks = [_cols(s, stack, *cols[j]) for j in range(len(ys))]
    subst = relayout(graph, s, [carry_view(new, k) for k in range(nc)], stacks)
    for c in graph.nodes:
        found = _concat_of_ys(c)
        if found is None or found[0] is not s:
            continue
        js = found[1]
        if all(cols[x][1] == cols[y][0] for x, y in itertools.pairwise(js)):
            subst[c] = _flat_cols(c, stack, cols[js[0]][0], cols[js[-1]][1], start)
    return subst


def _rows_block(s: Node) -> Node:
    return rows_of(s)


def _flat_cols(like: Node, stack: Node, a: int, b: int, width: int) -> Node:
    """The (T*R, b - a) view of columns a:b of the (T, R, width) merged stack."""
    x = _cols(like, stack, a, b) if b - a < width else stack
    return derive(like, "reshape", (x,), shape=(stack.shape[0] * stack.shape[1], b - a))


def _cols(like: Node, x: Node, a: int, b: int) -> Node:
    return derive(like, "getitem", (x,), index=(ALL, ALL, ("s", a, b, None)))


def share_ys_columns(graph: Graph) -> Graph:
    """A loop's ys that is a column block of another ys (SeqGRU's backward: the gradient of
    gh = h @ W_h[r, u], [dz_r dz_u], is the first 2H columns of gx's [dz_r dz_u dz_c], and
    dz_c its last H) is not written a second time: the body drops it and its readers after the
    loop read those columns of the wider ys's stack (one write a step, no copy)."""
    subst: dict[Node, Node] = {}
    for s in graph.nodes:
        if s.op != "scan" or s.attrs.get("shifted"):
            continue
        nc = s.attrs["n_carry"]
        ys = s.attrs["body"].outputs[nc:]
        found = _ys_in_columns(ys)
        if found:
            subst.update(_share(graph, s, found))
    return substitute(graph, subst) if subst else graph


def _column_pieces(y: Node) -> dict[Node, int] | None:
    """{piece: its first column} of a 2-d ys: the gradients an add_n of index_grads scatters
    into column blocks tiling it (each piece once), else y itself at column 0."""
    if y.op != "add_n":
        return {y: 0}
    blocks = [scatter_block(t, y.shape) for t in y.inputs]
    if any(b is None or b[0] != 1 for b in blocks) or len(set(y.inputs)) != len(y.inputs):
        return None
    edges = sorted(b[1:] for b in blocks)
    if edges[0][0] != 0 or edges[-1][1] != y.shape[1]:
        return None
    if any(a[1] != b[0] for a, b in itertools.pairwise(edges)):
        return None
    return {t.inputs[0]: b[1] for t, b in zip(y.inputs, blocks)}


def _ys_in_columns(ys: tuple) -> dict[int, tuple[int, int]]:
    """{j: (i, first column)}: ys j is those columns of ys i (i itself kept, the widest)."""
    if not ys or any(y.ndim != 2 for y in ys) or len({y.shape[0] for y in ys}) != 1:
        return {}
    pieces = [_column_pieces(y) for y in ys]
    order = sorted(range(len(ys)), key=lambda k: -ys[k].shape[1])
    found: dict[int, tuple[int, int]] = {}
    for j in order:  # (widest first: a ys kept as another's source is never dropped later)
        for i in order:
            if i == j or i in found or pieces[i] is None or pieces[j] is None:
                continue
            if ys[i].shape[1] <= ys[j].shape[1] or not pieces[j].keys() <= pieces[i].keys():
                continue
            shift = {pieces[i][p] - at for p, at in pieces[j].items()}
            if len(shift) == 1 and all(p.shape[0] == ys[j].shape[0] for p in pieces[j]):
                found[j] = (i, shift.pop())
                break
    return found


def _share(graph: Graph, s: Node, found: dict[int, tuple[int, int]]) -> dict[Node, Node]:
    nc, body = s.attrs["n_carry"], s.attrs["body"]
    cache = _BODIES.setdefault(body, {})
    key = ("shared", tuple(sorted(found)))
    if key not in cache:
        kept = [o for j, o in enumerate(body.outputs[nc:]) if j not in found]
        cache[key] = Graph(body.nodes, body.inputs, list(body.outputs[:nc]) + kept, body.meta)
    new = with_body(s, cache[key])
    ys = s.attrs["body"].outputs[nc:]
    at = {j: k for k, j in enumerate(j for j in range(len(ys)) if j not in found)}
    stacks = {j: ys_view(new, k) for j, k in at.items()}
    for j, (i, a) in found.items():
        stacks[j] = _cols(s, stacks[i], a, a + ys[j].shape[1])
    carries = [carry_view(new, k) for k in range(nc)]
    return relayout(graph, s, carries, [stacks[j] for j in range(len(ys))])
