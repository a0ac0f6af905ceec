"""Scan push-out of per-step products that are only returned: a ys y_t = q_t @ W (W an
invariant; in BPTT's reverse loop dx_t = dz_t @ W^T) becomes, when the loop writes q_t anyway
(or q_t is no larger), ys q_t and one GEMM over the (T*B, K) stack after the loop -- what
`stack_matmuls_over_time` does to unrolled graphs. A sum of such products whose q's the loop
writes anyway (an LSTM's dx_t = sum over gates of dz_g,t @ W_g^T) becomes a sum of GEMMs after
the loop (which gate fusion makes one)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ..graph import Graph, Node
from .rewrite import derive
from .slab import carry_view, relayout, rows_of, with_body, ys_view


@dataclass(frozen=True)
class YsRecipe:
    body: Graph
    # per old ys: ("ys", new ys index) or ("gemm", ((new ys index of q, W's input position,
    # W transposed), ...)): the sum of those products
    sources: tuple


_RECIPES: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()


def ys_recipe(body: Graph, nc: int, nx: int) -> YsRecipe | None:
    cache = _RECIPES.setdefault(body, {})
    if (nc, nx) not in cache:
        cache[(nc, nx)] = _make(body, nc, nx)
    return cache[(nc, nx)]


def _product(y: Node, inv: dict[Node, int]) -> tuple[Node, int, bool] | None:
    if y.op != "matmul" or y.ndim != 2 or y.inputs[0].ndim != 2:
        return None
    q, w = y.inputs
    transposed = False
    while (
        w.op == "transpose"
        and w.ndim == 2
        and w.inputs[0].ndim == 2
        and tuple(int(a) for a in w.attrs["axes"]) == (1, 0)
    ):  # W^T, (W^T)^T, ...
        w, transposed = w.inputs[0], not transposed
    if w in inv:
        return q, inv[w], transposed
    return None


def _products(y: Node, inv: dict[Node, int], ys: list[Node]) -> list | None:
    """y as a sum (add / add_n) of products q_t @ W whose q's are all returned already, with
    shapes y's (a broadcast term is no sum of products), else None."""
    if y.op not in ("add", "add_n") or y.ndim != 2:
        return None
    terms = [_product(t, inv) for t in y.inputs]
    if any(t is None or t[0] not in ys for t in terms) or any(t.shape != y.shape for t in y.inputs):
        return None
    return terms


def _make(body: Graph, nc: int, nx: int) -> YsRecipe | None:
    inv = {i: k for k, i in enumerate(body.inputs) if k >= nc + nx}
    read = {i for n in body.nodes for i in n.inputs}
    outs = list(body.outputs)
    ys = outs[nc:]
    found: dict[int, list[tuple[Node, int, bool]]] = {}
    for j, y in enumerate(ys):
        if y in read or outs.count(y) != 1:
            continue
        p = _product(y, inv)
        if p is None:
            terms = _products(y, inv, ys)
            if terms is not None:
                found[j] = terms
            continue
        q = p[0]
        if q in ys or q.size <= y.size or any(f[0][0] is q for f in found.values()):
            found[j] = [p]
    if not found:
        return None
    new_ys = [y for j, y in enumerate(ys) if j not in found]
    for terms in found.values():
        for q, _, _ in terms:
            if q not in new_ys:
                new_ys.append(q)
    sources = tuple(
        ("ys", new_ys.index(y))
        if j not in found
        else ("gemm", tuple((new_ys.index(q), w, tr) for q, w, tr in found[j]))
        for j, y in enumerate(ys)
    )
    new = Graph(body.nodes, body.inputs, outs[:nc] + new_ys, body.meta).eliminate_dead_code()
    return YsRecipe(new, sources)


def products_out(graph: Graph, s: Node, recipe: YsRecipe) -> dict[Node, Node]:
    """Substitutions for scan node `s`: the new scan and each pushed ys as one GEMM after it."""
    a = s.attrs
    nc, length = a["n_carry"], a["length"]
    new = with_body(s, recipe.body)
    rows = rows_of(new)
    stacks = [ys_view(new, j, rows) for j in range(len(recipe.body.outputs) - nc)]
    values = []
    for src in recipe.sources:
        if src[0] == "ys":
            values.append(stacks[src[1]])
            continue
        products = []
        for qj, wj, transposed in src[1]:
            q, w = stacks[qj], s.inputs[wj]
            if transposed:
                w = derive(s, "transpose", (w,), axes=(1, 0))
            flat = derive(s, "reshape", (q,), shape=(length * q.shape[1], q.shape[2]))
            products.append(derive(s, "matmul", (flat, w)))
        total = products[0] if len(products) == 1 else derive(s, "add_n", products)
        values.append(derive(s, "reshape", (total,), shape=(length, q.shape[1], w.shape[1])))
    return relayout(graph, s, [carry_view(new, k) for k in range(nc)], values)
