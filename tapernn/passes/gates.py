"""Gate fusion: matmuls that share their left operand and multiply loop-level right operands
(weights, their transposes, hoisted stacks) become one matmul against the concatenated right
operands, then column slices -- x@W_i, x@W_f, ... runs as x@[W_i W_f ...], like FastLSTM.
Dual (backward): a sum of matmuls within one step, sum_k g_k @ B_k, becomes one matmul
[g_1 ... g_k] @ [B_1; ...; B_k]. The weight concat is recomputed per call (params change)."""

from __future__ import annotations

from ..graph import Graph, Node
from .concat import make_concat, slice_axis
from .driver import must_follow
from .rewrite import (
    accept_independent,
    derive,
    invariant_nodes,
    is_matmul_2d,
    read_once,
    spanning,
    strip_transpose,
    substitute,
)


def fuse_gates(graph: Graph) -> Graph:
    """Every gate-fusion rewrite, in DEFAULT's order (DEFAULT lists them one by one)."""
    for rewrite in (merge_matmul_sums_within_steps, fuse_gate_matmuls, fuse_row_sums):
        graph = rewrite(graph)
    return graph


# hoisting first: the per-gate input projections are stacked over time before they are fused,
# and in backward dx_t = dz_t @ W_x^T is hoisted before it could be paired with the recurrent
# dh_t = dz_t @ W_h^T of the same step
@must_follow("stack_matmuls_over_time", "merge_matmul_sums_over_time")
def merge_matmul_sums_within_steps(graph: Graph) -> Graph:
    """sum_k g_k @ B_k within one step -> [g_1 ... g_k] @ [B_1; ...; B_k]."""
    return merge_matmul_sums(graph, lambda steps: len(steps) == 1)


@must_follow("stack_matmuls_over_time")
def fuse_gate_matmuls(graph: Graph) -> Graph:
    """x @ W_i, x @ W_f, ... (one x, loop-level right operands) -> x @ [W_i W_f ...], sliced."""
    pos = {n: k for k, n in enumerate(graph.nodes)}
    inv = invariant_nodes(graph)
    groups: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        # loop-level right operands (weights), or loop-level work as a whole (hoisted products)
        if is_matmul_2d(n) and (n.inputs[1] in inv or n.step is None):
            groups.setdefault(n.inputs[0], []).append(n)
    groups = {a: ms for a, ms in groups.items() if len({m.inputs[1] for m in ms}) >= 2}
    # order the blocks like the weights they belong to, so forward and backward concats agree:
    # by the weight's position, else (gradient products) by where the member's result goes
    first_use = {o: k - len(graph.outputs) for k, o in enumerate(graph.outputs)}
    for n in graph.nodes:
        for i in n.inputs:
            first_use.setdefault(i, pos[n])
    subst: dict[Node, Node] = {}
    canon: dict[Node, Node] = {}
    destination: dict[Node, tuple[int, int]] | None = None
    loop_free: set[Node] = set()  # computed from inputs and constants without a loop
    for n in graph.nodes:
        if n.op != "scan" and loop_free.issuperset(n.inputs):
            loop_free.add(n)
    for members in accept_independent(graph, groups, lambda m: m.inputs[1:]).values():
        rights = [m.inputs[1] for m in members]
        # (a stack's pieces first: in a rolled graph everything outside the loop is loop-level,
        # the gate-gradient stacks of a reverse loop too)
        stacked = _order_in_a_stack(graph, rights, canon)
        # gradient products (right operands computed by a loop or within steps, not weights):
        # in the order of the concat their results go to, when there is one
        placed = None
        if not stacked and not loop_free.issuperset(rights):
            destination = _destinations(graph, pos) if destination is None else destination
            placed = [destination.get(m) for m in members]
            placed = None if None in placed else dict(zip(members, placed))
        members.sort(
            key=lambda m: (
                (1, stacked[m.inputs[1]])
                if stacked
                else (2, placed[m])
                if placed
                else (0, base_position(pos, m.inputs[1]))
                if m.inputs[1] in inv
                else (3, first_use.get(m, 0))
            )
        )
        subst.update(fuse_shared_left(members, inv))
    return substitute(graph, subst)


def _destinations(graph: Graph, pos: dict[Node, int]) -> dict[Node, tuple[int, int]]:
    """{value: (position of the concat, piece index)} for values whose only reader chain of
    transposes and reshapes (each read once) ends as a piece of a concat: where a gradient
    product goes (the weight gradients of nn.packing: concat(dW_i, dW_f, ...) of
    transpose(x^T @ dz_k)). Without a stack to follow (no dX: backward(...,
    need_grad_input=False)), gate-fused gradient GEMMs order their blocks by it, so that the
    concat's pieces are whole products, not slices in another order (tape order is the
    gates' reverse), and `flip_transposed_products` can place them."""
    readers: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n)
    outputs = set(graph.outputs)
    out: dict[Node, tuple[int, int]] = {}
    for n in reversed(graph.nodes):  # readers first: a chain's end is known before its start
        users = readers.get(n, ())
        if len(users) != 1 or n in outputs:
            continue
        (u,) = users
        if u.op == "concat" and u.inputs.count(n) == 1:
            out[n] = (pos[u], u.inputs.index(n))
        elif u.op in ("transpose", "reshape") and u in out:
            out[n] = out[u]
    return out


def _order_in_a_stack(graph: Graph, rights: list[Node], canon: dict) -> dict[Node, int]:
    """{right: its position} in a column concat already in the graph of which `rights` are a
    run of adjacent pieces, up to common subexpressions and reshape chains (e.g. the dz stack
    [dz_i dz_f dz_o dz_g] that dx = dz @ W^T reads; GRU's [dz_r dz_z] in [dz_r dz_z dz_n]), so
    that the weight-gradient GEMM X^T @ [dz ...] reads that stack or a slice of it (after CSE)
    instead of a second concat of the pieces in another order; {} when there is none.
    `canon`: node -> its first equal node (filled on first use)."""
    if not canon:
        table: dict[tuple, Node] = {}
        for n in graph.nodes:
            if n.op in ("input", "constant"):
                key: tuple = (n,)
            elif n.op == "reshape":  # a chain of reshapes is one reshape of its base
                base = canon[n.inputs[0]]
                while base.op == "reshape":
                    base = canon[base.inputs[0]]
                if base.shape == n.shape:
                    canon[n] = base
                    continue
                key = ("reshape", base, n.shape)
            else:
                key = (n.op, tuple(canon[i] for i in n.inputs), n.attrs_key)
            canon[n] = table.setdefault(key, n)
    want = {canon[r]: r for r in rights}
    if len(want) != len(rights):
        return {}
    for n in graph.nodes:
        if n.op != "concat" or n.ndim != 2 or n.attrs["axis"] not in (1, -1):
            continue
        at = {canon[p]: k for k, p in enumerate(n.inputs)}
        if len(at) == len(n.inputs) and want.keys() <= at.keys():
            spots = [at[c] for c in want]
            if max(spots) - min(spots) == len(spots) - 1:  # a run of its pieces: a slice of it
                return {r: at[c] for c, r in want.items()}
    return {}


def base_position(pos: dict[Node, int], n: Node) -> int:
    return pos.get(strip_transpose(n), pos.get(n, 0))


def fuse_shared_left(members: list[Node], inv: set[Node]) -> dict[Node, Node]:
    """{member: column slice of A @ concat(B_k)} for matmuls A @ B_k, blocks in member order."""
    rights = list(dict.fromkeys(m.inputs[1] for m in members))
    first = members[0]
    tags = spanning(first) if all(b in inv for b in rights) else first
    weights = make_concat(tags, rights, axis=1)
    fused = derive(first, "matmul", (first.inputs[0], weights))
    offsets, start = {}, 0
    for b in rights:
        offsets[b] = (start, start + b.shape[1])
        start += b.shape[1]
    return {m: slice_axis(m, fused, 1, *offsets[m.inputs[1]]) for m in members}


def _step_key(n: Node) -> int:
    return -1 if n.step is None else n.step


def merge_matmul_sums(graph: Graph, steps_ok) -> Graph:
    """add_n nodes with >= 2 matmul terms (read only there) whose steps satisfy `steps_ok`:
    sum_k A_k @ B_k == concat(A_k, axis=1) @ concat(B_k, axis=0)."""
    pos = {n: k for k, n in enumerate(graph.nodes)}
    once = read_once(graph)
    inv = invariant_nodes(graph)
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op != "add_n":
            continue
        terms = [t for t in dict.fromkeys(n.inputs) if is_matmul_2d(t) and once(t)]
        if len(terms) < 2 or not steps_ok({t.step for t in terms}):
            continue
        terms.sort(key=lambda t: (_step_key(t), base_position(pos, t.inputs[1]), pos[t]))
        span = spanning(n) if len({t.step for t in terms}) > 1 else terms[0]
        left = make_concat(span, [t.inputs[0] for t in terms], axis=1)
        right_tags = spanning(n) if all(t.inputs[1] in inv for t in terms) else span
        right = make_concat(right_tags, [t.inputs[1] for t in terms], axis=0)
        merged = derive(n, "matmul", (left, right))
        rest = [i for i in n.inputs if i not in terms]
        subst[n] = merged if not rest else n.replace(inputs=tuple(rest) + (merged,))
    return substitute(graph, subst)


def _stack_layout(n: Node) -> tuple | None:
    """For sum(concat(p_1, ..., p_T, axis=0), axis=0): the pieces' (rows, step), else None."""
    x = n.inputs[0] if n.op == "sum" else None
    if x is None or n.attrs["axis"] != (0,) or n.attrs["keepdims"] or x.ndim != 2:
        return None
    if x.op != "concat" or x.attrs["axis"] != 0 or x.step is not None:
        return None
    return tuple((p.shape[0], p.step) for p in x.inputs)


def fuse_row_sums(graph: Graph) -> Graph:
    """Column sums of per-gate stacks, sum(concat_t(dz_k_t)) for k = i, f, o, g (the bias
    gradients), become one sum over the stack of [dz_i dz_f ...] blocks, then slices: the
    copying is the same, the stack is usually shared with the weight gradient. Sums whose
    pieces are exactly the column blocks of per-step concats already in the graph (the gate
    gradients [dz_i dz_f dz_g dz_o]_t the weight-gradient GEMM reads) are grouped apart and in
    those blocks' order, so their stack is that one; the rest (a peephole LSTM's dz_i * c_t-1,
    ...) get a stack of their own instead of interleaving with them and copying every dz_t."""
    once = read_once(graph)
    groups: dict[tuple, list[Node]] = {}
    for n in graph.nodes:
        layout = _stack_layout(n)
        if layout is not None and once(n.inputs[0]):  # (n, a sum, reads it once)
            groups.setdefault(layout, []).append(n)
    first_use = {o: k - len(graph.outputs) for k, o in enumerate(graph.outputs)}
    for k, n in enumerate(graph.nodes):
        for i in n.inputs:
            first_use.setdefault(i, k)
    column_of = _column_blocks(graph)
    subst: dict[Node, Node] = {}
    # (a sum of a stack holding another member's result cannot join it: issue 15's
    # a = sum(stack([x, h])); sum(stack([a, a])))
    for members in accept_independent(graph, groups, lambda m: m.inputs).values():
        for part in _split_by_blocks(members, column_of):
            if len(part) >= 2:
                subst.update(_one_sum(part))
        rest = [m for m in members if m not in subst]
        if len(rest) >= 2:
            rest.sort(key=lambda m: first_use.get(m, 0))
            subst.update(_one_sum(rest))
    return substitute(graph, subst)


def _one_sum(members: list[Node]) -> dict[Node, Node]:
    stacks = [m.inputs[0] for m in members]
    total = derive(
        members[0],
        "sum",
        (make_concat(spanning(members[0]), stacks, 1),),
        axis=(0,),
        keepdims=False,
    )
    out, start = {}, 0
    for m, x in zip(members, stacks):
        out[m] = slice_axis(m, total, 0, start, start + x.shape[1])
        start += x.shape[1]
    return out


def _column_blocks(graph: Graph) -> dict[Node, dict[tuple, int]]:
    """piece -> {pieces of a 2-D concat along axis 1 holding it: its block index} (concats
    keyed by their pieces: CSE has not merged the copies the earlier passes made yet)."""
    column_of: dict[Node, dict[tuple, int]] = {}
    for n in graph.nodes:
        if n.op == "concat" and n.ndim == 2 and n.attrs["axis"] == 1:
            for j, p in enumerate(n.inputs):
                column_of.setdefault(p, {})[n.inputs] = j
    return column_of


def _split_by_blocks(members: list[Node], column_of: dict) -> list[list[Node]]:
    """Groups of members that, step by step, fill every block of the same column concats;
    each sorted by block index."""
    by_concats: dict[tuple, dict[int, Node]] = {}
    for m in members:
        pieces = m.inputs[0].inputs
        for c, j in column_of.get(pieces[0], {}).items():
            cs = [c]
            for p in pieces[1:]:
                match = [
                    cc for cc, jj in column_of.get(p, {}).items() if jj == j and len(cc) == len(c)
                ]
                if len(match) != 1:
                    break
                cs.append(match[0])
            else:
                by_concats.setdefault(tuple(cs), {}).setdefault(j, m)
    parts, used = [], set()
    for cs, blocks in by_concats.items():
        if len(blocks) == len(cs[0]) and not used & set(blocks.values()):
            parts.append([blocks[j] for j in sorted(blocks)])
            used.update(blocks.values())
    return parts
