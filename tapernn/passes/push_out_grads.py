"""Scan push-out, reverse-loop half: a carry accumulating acc + a_t^T b_t (a parameter's
cotangent in the reverse loop of BPTT) or acc + sum(b_t, axis=0) (a bias's) whose terms are
per-step values becomes ys of the loop (or reads xs the loop already has) and one GEMM (or sum)
over the stacked values after it -- what `merge_matmul_sums_over_time` does to unrolled graphs."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from ..graph import Graph, Node
from .rewrite import derive, is_zero
from .slab import carry_view, relayout, rows_of, ys_view

# (tools/ab_peep.py: the old lowering of sum_mul, a (T, B, ...) product array then its sum)
SUM_MUL_PRODUCT = [False]
# below this many bytes of product the product is made and summed (merge_sums then sums the
# peephole products in one call with the others: at (1, 5, 5) three np.einsum calls cost more
# than the 300-byte array they save); from it on, sum_mul (tests set it to 0)
SUM_MUL_MIN_BYTES = [64 * 1024]


@dataclass(frozen=True)
class Accumulation:
    carry: int  # the carry position
    op: str  # "matmul" (terms P_t @ Q_t), "sum" (sum(Q_t, axes)), "sum_mul" (sum(A_t * B_t, axes))
    terms: tuple  # per operand: ("x", xs position) | ("y", new ys position); P's transposed?
    transposed: bool
    axes: tuple[int, ...] = ()
    outer: bool = False  # terms (P_t @ Q_t)^T: the total transposed (a weight's own layout)


@dataclass(frozen=True)
class GradRecipe:
    body: Graph  # the body without the accumulating carries, the terms as ys
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
    ys_pos: dict[Node, int] = {}
    for j, o in enumerate(body.outputs[nc:]):
        ys_pos.setdefault(o, j)
    outs = set(body.outputs)
    gemm_terms = _gemm_terms(body, nc)
    blocks = _column_blocks([*body.outputs[nc:], *sorted(gemm_terms, key=lambda n: n.id)])
    extra: list[Node] = []
    found = []
    for k in range(nc):
        acc, new = body.inputs[k], body.outputs[k]
        if (
            new.op != "add"
            or acc not in new.inputs
            or users.get(acc) != 1
            or acc in outs
            or new.inputs[0] is new.inputs[1]
            or users.get(new)
            or body.outputs.count(new) != 1
        ):
            continue  # acc and acc' must be read by nothing else in the loop
        m = new.inputs[1] if new.inputs[0] is acc else new.inputs[0]
        if m.shape != acc.shape:
            continue
        outer = _swap(m) and m.inputs[0].op == "matmul"
        m = m.inputs[0] if outer else m
        if m.op == "matmul" and m.ndim == 2 and all(i.ndim == 2 for i in m.inputs):
            p, q = m.inputs
            transposed = _swap(p)
            p = p.inputs[0] if transposed else p
            terms = tuple(_term(v, xs_pos, ys_pos, extra) for v in (p, q))
            found.append(Accumulation(k, "matmul", terms, transposed, outer=outer))
        elif m.op == "sum" and not m.attrs.get("keepdims") and m.attrs.get("axis") is not None:
            q = m.inputs[0]
            axes = tuple(m.attrs["axis"])
            if q.ndim - len(axes) != m.ndim:
                continue
            stored = (xs_pos, ys_pos, gemm_terms, blocks)
            if q not in xs_pos and q not in ys_pos and q not in gemm_terms:
                pair = _stored_product(q, stored)
                if pair is not None:
                    # a peephole's sum_t sum_b dz_t * c_t of stored dz and c: one product
                    # over the stacks after the loop, no per-step work, no new ys, and no
                    # (H,) carries in the reverse loop's slab before its rows: the slab is
                    # then the size of the forward's (final h, c | gate rows) and its dZ
                    # rows line up with the gate rows, so PlanOptions.dz_in_gates can write
                    # it over them (issue 16). The price, a (T, B, H) product after the
                    # loop, lies in the shared arena beside the forward's buffers (at
                    # (50, 32, 256) f32 the loop peak goes 14.83U -> 11.97U: BENCHMARKS.md)
                    terms = tuple(_term(v, xs_pos, ys_pos, extra, blocks) for v in pair)
                    found.append(Accumulation(k, "sum_mul", terms, False, axes))
                    continue
                if m.size < q.size:
                    # otherwise pushed out it would be a new (B, H) ys per step (T*B*H
                    # slab) to save an (H,) carry; it stays in the loop
                    continue
            found.append(Accumulation(k, "sum", (_term(q, xs_pos, ys_pos, extra),), False, axes))
    if not found:
        return None
    # the accumulating carries leave the loop altogether (no input, no output, no slab space)
    gone = {a.carry for a in found}
    inputs = [i for k, i in enumerate(body.inputs) if k not in gone]
    outputs = [o for k, o in enumerate(body.outputs[:nc]) if k not in gone]
    outputs += list(body.outputs[nc:]) + extra
    nodes = [n for n in body.nodes if n.op != "input" or n in inputs]
    new = Graph(nodes, inputs, outputs, body.meta).eliminate_dead_code()
    return GradRecipe(new, tuple(found))


def _stored_product(q: Node, stored: tuple) -> tuple[Node, Node] | None:
    """q = a * b with a and b per-step values of q's shape the loop stacks anyway (xs, ys,
    operands of pushed-out GEMMs, or column blocks of a ys), else None."""
    if q.op != "mul" or len(q.inputs) != 2:
        return None
    if all(v.shape == q.shape and any(v in where for where in stored) for v in q.inputs):
        return q.inputs[0], q.inputs[1]
    return None


def _column_blocks(stored: list[Node]) -> dict[Node, tuple[Node, int, int]]:
    """Per-step values the loop stores anyway as a block of columns of a `stored` value (a ys,
    or an operand of a pushed-out GEMM): v -> (that value, first column, end) where it is a
    sum of index_grads of disjoint column blocks, v one of them (the gate gradients of one
    GEMM's column slices, `a[..., :H]`, before index_grads_to_concat makes the sum their
    concat): a coupled-gate LSTM's peephole gradient sum_t sum_b dz_t * c_t then reads the
    stored dz, and no (H,) carry stays in the loop (the batch split needs none)."""
    out: dict[Node, tuple[Node, int, int]] = {}
    for y in stored:
        if y.op != "add_n" or y.ndim != 2 or any(t.op != "index_grad" for t in y.inputs):
            continue
        spans = [_columns_of(t, y.shape) for t in y.inputs]
        if None in spans or any(
            a < d and c < b for k, (a, b) in enumerate(spans) for c, d in spans[k + 1 :]
        ):
            continue
        for t, (a, b) in zip(y.inputs, spans):
            out.setdefault(t.inputs[0], (y, a, b))
    return out


def _columns_of(t: Node, shape: tuple) -> tuple[int, int] | None:
    """(start, end) of index_grad `t`'s block of a 2-D `shape` when it is every row and a
    step-1 slice of the columns (`[..., a:b]` or `[:, a:b]`), else None."""
    index = tuple(t.attrs["index"])
    if len(index) != 2 or index[0] not in (Ellipsis, ("s", None, None, None)):
        return None
    col = index[1]
    if not (isinstance(col, tuple) and col[0] == "s" and col[3] in (None, 1)):
        return None
    if tuple(t.attrs["shape"]) != tuple(shape):
        return None
    start, stop, _ = slice(col[1], col[2]).indices(shape[1])
    return (start, stop) if t.inputs[0].shape == (shape[0], stop - start) else None


def _gemm_terms(body: Graph, nc: int) -> set[Node]:
    """The per-step operands of the matmul terms accumulated into carries (ys once pushed
    out): a sum of one of them costs no new ys."""
    terms: set[Node] = set()
    for k in range(nc):
        new = body.outputs[k]
        if new.op != "add" or body.inputs[k] not in new.inputs:
            continue
        for m in new.inputs:
            m = m.inputs[0] if _swap(m) else m
            if m.op == "matmul":
                terms.update(i.inputs[0] if _swap(i) else i for i in m.inputs)
    return terms


def _swap(n: Node) -> bool:
    """Is `n` the transpose of a matrix (axes (1, 0))?"""
    return (
        n.op == "transpose"
        and n.ndim == 2
        and n.inputs[0].ndim == 2
        and tuple(int(a) for a in n.attrs["axes"]) == (1, 0)
    )


def _term(
    v: Node,
    xs_pos: dict[Node, int],
    ys_pos: dict[Node, int],
    extra: list[Node],
    blocks: dict | None = None,
) -> tuple:
    """Where the loop's stack of the per-step value `v` is: an xs ("x"), a ys the body already
    returns ("o"), a new ys ("y"), or columns of one of those ("c": its term, start, end;
    _column_blocks)."""
    if v in xs_pos:
        return ("x", xs_pos[v])
    if v in ys_pos:
        return ("o", ys_pos[v])
    if blocks and v in blocks:
        y, a, b = blocks[v]
        return ("c", _term(y, xs_pos, ys_pos, extra), a, b)
    if v not in extra:
        extra.append(v)
    return ("y", extra.index(v))


def accumulations_out(graph: Graph, s: Node, recipe: GradRecipe) -> dict[Node, Node]:
    """Substitutions putting `recipe` into `graph` for scan node `s`: the new scan, each
    accumulation as one op over the stacked terms after it, and `s`'s readers rewired."""
    a = s.attrs
    body, nc = a["body"], a["n_carry"]
    gone = {acc.carry for acc in recipe.found}
    kept = [k for k in range(nc) if k not in gone]
    new = derive(
        s,
        "scan",
        [i for k, i in enumerate(s.inputs) if k not in gone],
        body=recipe.body,
        n_carry=len(kept),
        **{k: a[k] for k in ("n_xs", "length", "reverse")},
    )
    rows = rows_of(new)
    n_out = len(body.outputs)
    stacked = [ys_view(new, j, rows) for j in range(len(recipe.body.outputs) - len(kept))]
    finals = {acc.carry: _final(s, acc, stacked, n_out - nc, body) for acc in recipe.found}
    carries = [finals[k] if k in finals else carry_view(new, kept.index(k)) for k in range(nc)]
    return relayout(graph, s, carries, stacked[: n_out - nc])


def _final(s: Node, acc: Accumulation, stacked: list[Node], n_ys: int, body: Graph) -> Node:
    """The accumulated carry's final value: its initial value plus one op over the stacks
    (`stacked`: the new loop's ys stacks, its old `n_ys` ones first)."""
    length = s.attrs["length"]
    m = next(i for i in body.outputs[acc.carry].inputs if i is not body.inputs[acc.carry])
    m = m.inputs[0] if acc.outer else m

    def stack(term: tuple) -> Node:
        if term[0] == "x":
            return s.inputs[term[1]]
        if term[0] == "c":
            full = ("s", None, None, None)
            columns = (full, full, ("s", term[2], term[3], None))
            return derive(s, "getitem", (stack(term[1]),), index=columns)
        return stacked[term[1]] if term[0] == "o" else stacked[n_ys + term[1]]

    if acc.op == "matmul":
        p, q = m.inputs
        p = p.inputs[0] if acc.transposed else p
        ps, qs = stack(acc.terms[0]), stack(acc.terms[1])
        if acc.transposed:  # sum_t a_t^T q_t = A^T Q over the (T*B, .) views
            left = derive(
                s,
                "transpose",
                (derive(s, "reshape", (ps,), shape=(length * p.shape[0], p.shape[1])),),
                axes=(1, 0),
            )
        else:  # sum_t P_t Q_t = [P_0 P_1 ...] [Q_0; Q_1; ...]
            left = derive(
                s,
                "reshape",
                (derive(s, "transpose", (ps,), axes=(1, 0, 2)),),
                shape=(p.shape[0], length * p.shape[1]),
            )
        right = derive(s, "reshape", (qs,), shape=(length * q.shape[0], q.shape[1]))
        total = derive(s, "matmul", (left, right))
        if acc.outer:
            total = derive(s, "transpose", (total,), axes=(1, 0))
    else:
        summed, axes = stack(acc.terms[0]), (0, *[x + 1 for x in acc.axes])
        big = math.prod(summed.shape) * np.dtype(summed.dtype).itemsize >= SUM_MUL_MIN_BYTES[0]
        if acc.op == "sum_mul" and big and not SUM_MUL_PRODUCT[0]:  # over the stacks, with no
            # product array (issue 19: it was a (T, B, H) buffer in the arena)
            other = stack(acc.terms[1])
            total = derive(s, "sum_mul", (summed, other), axis=axes, keepdims=False)
        else:
            if acc.op == "sum_mul":  # (SUM_MUL_PRODUCT: the product of the stacks, then its sum)
                summed = derive(s, "mul", (summed, stack(acc.terms[1])))
            total = derive(s, "sum", (summed,), axis=axes, keepdims=False)
    init = s.inputs[acc.carry]
    return total if is_zero(init) else derive(s, "add", (init, total))
