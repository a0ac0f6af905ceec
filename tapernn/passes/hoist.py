"""Hoisting across time: in an unrolled graph, work that does not depend on the recurrent state
is done once for all steps. Matmuls x_t @ W (one loop-level W, lefts independent of the group)
become one matmul of the row-stacked x_t, sliced back per step; sums over steps of per-step
products (the weight gradient sum_t x_t^T dz_t) and of per-step row sums (the bias gradient)
become one matmul / one sum over the stacked operands."""

from __future__ import annotations

from ..graph import Graph, Node
from .concat import make_concat, slice_axis
from .gates import merge_matmul_sums
from .rewrite import (
    accept_independent,
    derive,
    freeze,
    invariant_nodes,
    is_matmul_2d,
    read_once,
    spanning,
    substitute,
)


def hoist_across_time(graph: Graph) -> Graph:
    """Every hoisting rewrite, in DEFAULT's order (DEFAULT lists them one by one)."""
    for rewrite in HOISTING:
        graph = rewrite(graph)
    return graph


def stack_matmuls_over_time(graph: Graph) -> Graph:
    """x_t @ W for every step t (one loop-level W) -> one matmul of the stacked x_t, sliced."""
    groups: dict[Node, list[Node]] = {}
    inv = invariant_nodes(graph)
    for n in graph.nodes:
        if is_matmul_2d(n) and n.step is not None and n.inputs[1] in inv:
            groups.setdefault(n.inputs[1], []).append(n)
    groups = {r: ms for r, ms in groups.items() if len({m.step for m in ms}) >= 2}
    subst: dict[Node, Node] = {}
    for members in accept_independent(graph, groups, lambda m: m.inputs[:1]).values():
        subst.update(stack_rows(members))
    return substitute(graph, subst)


def merge_matmul_sums_over_time(graph: Graph) -> Graph:
    """sum_t x_t^T @ dz_t over several steps -> one matmul of the stacked operands."""
    return merge_matmul_sums(graph, lambda steps: len(steps) > 1)


def stack_rows(members: list[Node]) -> dict[Node, Node]:
    """{member: its row block of concat(L_k) @ R} for matmuls L_k @ R sharing R."""
    members = sorted(members, key=lambda m: m.step)  # time order: x[0], x[1], ... is x itself
    lefts = list(dict.fromkeys(m.inputs[0] for m in members))
    span = spanning(members[0])
    stacked = make_concat(span, lefts, axis=0)
    product = derive(span, "matmul", (stacked, members[0].inputs[1]))
    rows, start = {}, 0
    for left in lefts:
        rows[left] = (start, start + left.shape[0])
        start += left.shape[0]
    return {m: slice_axis(m, product, 0, *rows[m.inputs[0]]) for m in members}


def pull_transposes_out_of_sums(graph: Graph) -> Graph:
    """add_n(t(A_1), ..., t(A_k), rest) == add_n(t(add_n(A_1, ..., A_k)), rest): Linear's
    weight gradient arrives per step as (x_t^T dz_t)^T; with the transposes pulled out the sum
    over steps meets merge_matmul_sums and becomes one (TB-deep) GEMM instead of T thin ones
    plus T full-size additions."""
    once = read_once(graph)
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op != "add_n":
            continue
        by_axes: dict[tuple, list[Node]] = {}
        for t in dict.fromkeys(n.inputs):
            if (
                t.op == "transpose"
                and once(t)
                and is_matmul_2d(t.inputs[0])
                and t.inputs[0].step is not None
            ):
                by_axes.setdefault(tuple(t.attrs["axes"]), []).append(t)
        for axes, terms in by_axes.items():
            if len(terms) < 2 or len({t.inputs[0].step for t in terms}) < len(terms):
                continue
            inner = derive(spanning(n), "add_n", [t.inputs[0] for t in terms])
            pulled = derive(n, "transpose", (inner,), axes=axes)
            rest = [i for i in n.inputs if i not in terms]
            n2 = pulled if not rest else n.replace(inputs=tuple(rest) + (pulled,))
            subst[n] = n2
            break  # one group per add_n and pass run: the usual case has one
    return substitute(graph, subst)


def _row_sum(n: Node) -> bool:
    return n.op == "sum" and n.inputs[0].ndim == 2 and 0 in n.attrs["axis"]


def merge_row_sums(graph: Graph) -> Graph:
    """add_n(sum(x_t, axis incl. 0), ...) over several steps == sum(concat(x_t, axis=0))."""
    once = read_once(graph)
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op != "add_n":
            continue
        terms = [t for t in dict.fromkeys(n.inputs) if _row_sum(t) and once(t)]
        by_attrs: dict[tuple, list[Node]] = {}
        for t in terms:
            by_attrs.setdefault(
                (t.attrs["axis"], t.attrs["keepdims"], t.inputs[0].shape[1:]), []
            ).append(t)
        merged, used = [], set()
        for (axis, keepdims, _), group in by_attrs.items():
            steps = {t.step for t in group}
            if len(group) < 2 or len(steps) < 2 or None in steps:
                continue
            group.sort(key=lambda t: t.step)  # time order, like every other stack
            stacked = make_concat(spanning(n), [t.inputs[0] for t in group], axis=0)
            merged.append(derive(n, "sum", (stacked,), axis=axis, keepdims=keepdims))
            used.update(group)
        if merged:
            rest = [i for i in n.inputs if i not in used] + merged
            subst[n] = rest[0] if len(rest) == 1 else n.replace(inputs=tuple(rest))
    return substitute(graph, subst)


def stack_index_grads(graph: Graph) -> Graph:
    """add_n(index_grad(g_t, shape, (t,)) for every t along axis 0) == the g_t stacked; this is
    the gradient of x from its per-step slices x[t] (and it meets the hoisted matmul's rows)."""
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op != "add_n" or n.ndim < 2 or len(n.inputs) != n.shape[0]:
            continue
        picks = {}
        for t in n.inputs:
            index = t.attrs.get("index") if t.op == "index_grad" else None
            if not index or len(index) != 1 or not isinstance(index[0], int):
                break
            picks[index[0] % n.shape[0]] = t.inputs[0]
        if len(picks) != n.shape[0]:
            continue
        rows = [picks[k] for k in range(n.shape[0])]
        flat = make_concat(spanning(n), rows, axis=0)
        subst[n] = derive(n, "reshape", (flat,), shape=n.shape)
    return substitute(graph, subst)


def pull_slices_out_of_sums(graph: Graph) -> Graph:
    """add_n(b_1[idx], ..., b_k[idx]) == (b_1 + ... + b_k)[idx]: when every step sums the same
    block of the same hoisted results, CSE then keeps one sum over all steps."""
    subst: dict[Node, Node] = {}
    totals: dict[tuple[Node, ...], Node] = {}  # one sum per set of bases, shared by all steps
    for n in graph.nodes:
        if n.op != "add_n" or any(i.op != "getitem" for i in n.inputs):
            continue
        bases = [i.inputs[0] for i in n.inputs]
        if (
            len({freeze(i.attrs["index"]) for i in n.inputs}) != 1
            or len(set(bases)) != len(bases)
            or len({b.shape for b in bases}) != 1
            or any(b.step is not None for b in bases)
        ):
            continue
        total = totals.setdefault(tuple(bases), derive(spanning(n), "add_n", bases))
        subst[n] = derive(n, "getitem", (total,), index=n.inputs[0].attrs["index"])
    return substitute(graph, subst)


HOISTING = (
    stack_matmuls_over_time,
    pull_transposes_out_of_sums,
    merge_matmul_sums_over_time,
    merge_row_sums,
    pull_slices_out_of_sums,
    stack_index_grads,
)
