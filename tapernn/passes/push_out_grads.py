"""Scan push-out, reverse-loop half: a carry accumulating acc + a_t^T b_t (a parameter's
cotangent in the reverse loop of BPTT) or acc + sum(b_t, axis=0) (a bias's) whose terms are
per-step values becomes ys of the loop (or reads xs the loop already has) and one GEMM (or sum)
over the stacked values after it -- what `merge_matmul_sums_over_time` does to unrolled graphs."""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

from ..graph import Graph, Node
from .rewrite import derive, is_zero

_ALL = ("s", None, None, None)


@dataclass(frozen=True)
class Accumulation:
    carry: int  # the carry position
    op: str  # "matmul" (terms P_t @ Q_t) or "sum" (terms sum(Q_t, axes))
    terms: tuple  # per operand: ("x", xs position) | ("y", new ys position); P's transposed?
    transposed: bool
    axes: tuple[int, ...] = ()


@dataclass(frozen=True)
class GradRecipe:
    body: Graph  # the body with the accumulating carries passed through, the terms as ys
    found: tuple[Accumulation, ...]


_RECIPES: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()


def grad_recipe(body: Graph, nc: int, nx: int) -> GradRecipe | None:
    cache = _RECIPES.setdefault(body, {})
    if (nc, nx) not in cache:
        cache[(nc, nx)] = _make(body, nc, nx)
    return cache[(nc, nx)]


def _make(body: Graph, nc: int, nx: int) -> GradRecipe | None:
    users: dict[Node, int] = {}
    for n in body.nodes:
        for i in n.inputs:
            users[i] = users.get(i, 0) + 1
    xs_pos = {i: k for k, i in enumerate(body.inputs) if nc <= k < nc + nx}
    outs = set(body.outputs)
    extra: list[Node] = []
    found = []
    for k in range(nc):
        acc, new = body.inputs[k], body.outputs[k]
        if new.op != "add" or acc not in new.inputs or users.get(acc) != 1 or acc in outs \
                or new.inputs[0] is new.inputs[1]:
            continue
        m = new.inputs[1] if new.inputs[0] is acc else new.inputs[0]
        if m.shape != acc.shape:
            continue
        if m.op == "matmul" and m.ndim == 2 and all(i.ndim == 2 for i in m.inputs):
            p, q = m.inputs
            transposed = p.op == "transpose" and p.inputs[0].ndim == 2
            p = p.inputs[0] if transposed else p
            terms = tuple(_term(v, xs_pos, extra) for v in (p, q))
            found.append(Accumulation(k, "matmul", terms, transposed))
        elif m.op == "sum" and not m.attrs.get("keepdims"):
            q = m.inputs[0]
            axes = tuple(m.attrs["axis"])
            if q.ndim - len(axes) != m.ndim:
                continue
            found.append(Accumulation(k, "sum", (_term(q, xs_pos, extra),), False, axes))
    if not found:
        return None
    outputs = list(body.outputs)
    for a in found:
        outputs[a.carry] = body.inputs[a.carry]
    new = Graph(body.nodes, body.inputs, outputs + extra, body.meta).eliminate_dead_code()
    return GradRecipe(new, tuple(found))


def _term(v: Node, xs_pos: dict[Node, int], extra: list[Node]) -> tuple[str, int]:
    if v in xs_pos:
        return ("x", xs_pos[v])
    if v not in extra:
        extra.append(v)
    return ("y", extra.index(v))


def accumulations_out(graph: Graph, s: Node, recipe: GradRecipe) -> dict[Node, Node]:
    """Substitutions putting `recipe` into `graph` for scan node `s`: the new scan, each
    accumulation as one op over the stacked terms after it, and `s`'s readers rewired."""
    a = s.attrs
    body, nc, length = a["body"], a["n_carry"], a["length"]
    new = derive(s, "scan", s.inputs, body=recipe.body, n_carry=nc, n_xs=a["n_xs"],
                 length=length, reverse=a["reverse"])
    sizes = [math.prod(o.shape) for o in body.outputs]
    c, width = sum(sizes[:nc]), sum(sizes[nc:])
    wide = sum(math.prod(o.shape) for o in recipe.body.outputs[nc:])
    rows = derive(s, "reshape", (derive(s, "getitem", (new,), index=(
        ("s", c, c + length * wide, None),)),), shape=(length, wide))
    finals = {acc.carry: _final(s, acc, rows, width, recipe, body, length)
              for acc in recipe.found}
    spans, start = [], 0
    for size in sizes[:nc]:
        spans.append((start, start + size))
        start += size
    old_rows = derive(s, "getitem", (rows,), index=(_ALL, ("s", 0, width, None)))
    subst = {s: _fallback(s, new, finals, spans, old_rows, length * width)}
    for u in _users(graph, s):
        key = u.attrs.get("index") if u.op == "getitem" else None
        if not key or len(key) != 1 or not isinstance(key[0], tuple) or key[0][0] != "s" \
                or key[0][3] not in (None, 1) or None in key[0][1:3]:
            continue
        lo, hi = key[0][1], key[0][2]
        hit = [k for k, (x, y) in enumerate(spans) if k in finals and lo < y and x < hi]
        if hit == [] and 0 <= lo <= hi <= c:
            subst[u] = derive(s, "getitem", (new,), index=key)
        elif len(hit) == 1 and spans[hit[0]] == (lo, hi):
            subst[u] = derive(s, "reshape", (finals[hit[0]],), shape=(hi - lo,))
        elif (lo, hi) == (c, c + length * width) and width:
            for w in _users(graph, u):
                if w.op == "reshape" and w.shape == (length, width):
                    subst[w] = old_rows
    return subst


def _users(graph: Graph, n: Node) -> list[Node]:
    return [u for u in graph.nodes if n in u.inputs]


def _stacked(s: Node, term: tuple, v: Node, rows: Node, width: int, extra: list[Node],
             length: int) -> Node:
    """The (length, *shape) stack of one term: an xs of the loop, or a ys column block (the
    new ys come after the `width` columns of the old ones)."""
    kind, pos = term
    if kind == "x":
        return s.inputs[pos]
    start = width + sum(o.size for o in extra[:pos])
    block = derive(s, "getitem", (rows,), index=(_ALL, ("s", start, start + v.size, None)))
    return derive(s, "reshape", (block,), shape=(length, *v.shape))


def _final(s: Node, acc: Accumulation, rows: Node, width: int, recipe: GradRecipe,
           body: Graph, length: int) -> Node:
    extra = recipe.body.outputs[len(body.outputs):]
    m = next(i for i in body.outputs[acc.carry].inputs if i is not body.inputs[acc.carry])
    if acc.op == "matmul":
        p, q = m.inputs
        p = p.inputs[0] if acc.transposed else p
        ps, qs = (_stacked(s, t, v, rows, width, extra, length)
                  for t, v in zip(acc.terms, (p, q)))
        if acc.transposed:  # sum_t a_t^T q_t = A^T Q over the (T*B, .) views
            left = derive(s, "transpose", (derive(s, "reshape", (ps,), shape=(
                length * p.shape[0], p.shape[1])),), axes=(1, 0))
        else:  # sum_t P_t Q_t = [P_0 P_1 ...] [Q_0; Q_1; ...]
            left = derive(s, "reshape", (derive(s, "transpose", (ps,), axes=(1, 0, 2)),),
                          shape=(p.shape[0], length * p.shape[1]))
        right = derive(s, "reshape", (qs,), shape=(length * q.shape[0], q.shape[1]))
        total = derive(s, "matmul", (left, right))
    else:
        qs = _stacked(s, acc.terms[0], m.inputs[0], rows, width, extra, length)
        total = derive(s, "sum", (qs,), axis=(0, *[x + 1 for x in acc.axes]), keepdims=False)
    init = s.inputs[acc.carry]
    return total if is_zero(init) else derive(s, "add", (init, total))


def _fallback(s: Node, new: Node, finals: dict[int, Node], spans: list, old_rows: Node,
              n_ys: int) -> Node:
    """The old slab rebuilt (a copy) for readers other than the usual views."""
    pieces = [derive(s, "reshape", (finals[k],), shape=(b - a,)) if k in finals else
              derive(s, "getitem", (new,), index=(("s", a, b, None),))
              for k, (a, b) in enumerate(spans) if b > a]
    if n_ys:
        pieces.append(derive(s, "reshape", (old_rows,), shape=(n_ys,)))
    return derive(s, "concat", pieces, axis=0) if len(pieces) > 1 else pieces[0]
