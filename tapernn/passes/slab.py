"""A scan's slab seen from the passes: its layout (final carries, then a (length, Y) block of
ys rows), views of a carry or a ys in it, and `relayout`, which rewires the readers of an old
slab to new values for its carries and ys when a push-out changes what the loop writes."""

from __future__ import annotations

import math

from ..errors import GraphError
from ..graph import Graph, Node
from .rewrite import derive

ALL = ("s", None, None, None)


def spans(shapes: list[tuple]) -> list[tuple[int, int]]:
    out, start = [], 0
    for s in shapes:
        out.append((start, start + math.prod(s)))
        start += math.prod(s)
    return out


def layout(s: Node) -> tuple[list[tuple], list[tuple], int, int]:
    """(carry shapes, ys shapes, C, Y) of scan node `s`."""
    body, nc = s.attrs["body"], s.attrs["n_carry"]
    cs = [o.shape for o in body.outputs[:nc]]
    ys = [o.shape for o in body.outputs[nc:]]
    return cs, ys, sum(map(math.prod, cs)), sum(map(math.prod, ys))


def with_body(s: Node, body: Graph) -> Node:
    """Scan node `s` over the same inputs with another body (a pass's rewritten loop)."""
    a = s.attrs
    if a.get("shifted"):
        raise GraphError("with_body: a scan with shifted state blocks keeps its body (internal)")
    keep = {k: a[k] for k in ("n_carry", "n_xs", "length", "reverse")}
    return derive(s, "scan", s.inputs, body=body, **keep)


def carry_view(s: Node, k: int) -> Node:
    cs, _, _, _ = layout(s)
    a, b = spans(cs)[k]
    return derive(
        s, "reshape", (derive(s, "getitem", (s,), index=(("s", a, b, None),)),), shape=cs[k]
    )


def rows_of(s: Node) -> Node:
    _, _, c, y = layout(s)
    t = s.attrs["length"]
    return derive(
        s,
        "reshape",
        (derive(s, "getitem", (s,), index=(("s", c, c + t * y, None),)),),
        shape=(t, y),
    )


def slice_bounds(u: Node) -> tuple[int, int] | None:
    """(a, b) when `u` reads x[a:b] of a 1-D value with constant bounds and step 1 (how the
    slab's readers pick their part of it), else None."""
    key = u.attrs.get("index") if u.op == "getitem" else None
    if (
        not key
        or len(key) != 1
        or not isinstance(key[0], tuple)
        or key[0][0] != "s"
        or key[0][3] not in (None, 1)
        or None in key[0][1:3]
    ):
        return None
    return key[0][1], key[0][2]


def ys_view(s: Node, j: int, rows: Node | None = None) -> Node:
    _, ys, _, _ = layout(s)
    a, b = spans(ys)[j]
    rows = rows_of(s) if rows is None else rows
    block = derive(s, "getitem", (rows,), index=(ALL, ("s", a, b, None)))
    return derive(s, "reshape", (block,), shape=(s.attrs["length"], *ys[j]))


def _columns(u: Node) -> tuple[int, int] | None:
    key = u.attrs.get("index") if u.op == "getitem" else None
    if (
        not key
        or len(key) != 2
        or key[0] != ALL
        or not isinstance(key[1], tuple)
        or key[1][0] != "s"
        or key[1][3] not in (None, 1)
        or None in key[1][1:3]
    ):
        return None
    return key[1][1], key[1][2]


def relayout(graph: Graph, s: Node, carries: list[Node], ys: list[Node]) -> dict[Node, Node]:
    """Substitutions giving the readers of `s`'s slab the values `carries` (shaped as the
    carries) and `ys` ((length, *shape) each): the builder's views are rewired to them, `s`
    itself (for any other reader) becomes a concat of them all (a copy; dead otherwise)."""
    cs, yshapes, c, width = layout(s)
    t = s.attrs["length"]
    users: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    flat = [derive(s, "reshape", (v,), shape=(math.prod(sh),)) for v, sh in zip(carries, cs)]
    flat += [derive(s, "reshape", (v,), shape=(t, math.prod(sh))) for v, sh in zip(ys, yshapes)]
    block = (
        (derive(s, "concat", flat[len(cs) :], axis=1) if len(ys) > 1 else flat[-1]) if ys else None
    )
    pieces = [p for p in flat[: len(cs)] if p.size] + (
        [derive(s, "reshape", (block,), shape=(t * width,))]
        if block is not None and t * width
        else []
    )
    subst: dict[Node, Node] = {}
    if pieces:
        subst[s] = derive(s, "concat", pieces, axis=0) if len(pieces) > 1 else pieces[0]
    carry_at = {ab: k for k, ab in enumerate(spans(cs))}
    ys_at = {ab: j for j, ab in enumerate(spans(yshapes))}
    for u in users.get(s, ()):
        ab = slice_bounds(u)
        if ab in carry_at:
            subst[u] = flat[carry_at[ab]]
        elif ab == (c, c + t * width) and ys:
            for r in users.get(u, ()):
                if r.op == "reshape" and r.shape == (t, width):
                    _rows_readers(r, users, ys, yshapes, ys_at, flat[len(cs) :], subst)
    return subst


def _rows_readers(
    r: Node,
    users: dict,
    ys: list[Node],
    yshapes: list,
    ys_at: dict,
    flat_ys: list[Node],
    subst: dict[Node, Node],
) -> None:
    t = r.shape[0]
    for w in users.get(r, ()):
        ab = _columns(w)
        if ab in ys_at:
            subst[w] = flat_ys[ys_at[ab]]
        elif w.op == "reshape" and len(ys) == 1 and w.shape == (t, *yshapes[0]):
            subst[w] = ys[0]
