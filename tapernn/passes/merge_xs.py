"""One xs for a loop's per-gate inputs (issue 16 at small sizes): a scan whose body adds each of
several xs to its own product of the same h, X_k,t + h_t @ W_k (a peephole LSTM's four gates
after push-out: x_t @ W_xk + b_k stacked over time, the recurrent products fused later into one
h_t @ [W_i W_f W_g W_o]), reads them as column blocks of ONE xs, their concat along the last
axis, in the order gate fusion gives the weights. `batch_sliced_elementwise` then makes the
body's four (B, H) adds one (B, 4H) add, as in FastLSTM's body: fewer calls per step, which
is what the step costs at small B*H. Left alone above `SMALL_STEP_BYTES` per step, where a
call's overhead is nothing next to its work and the concat is a copy of the stacks."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

from ..graph import Graph, Node
from .concat import basic_ranges, make_concat
from .rewrite import derive, input_like, strip_transpose, substitute

SMALL_STEP_BYTES = 16 * 1024  # a merged group's (B, sum H_k) row, per step


@dataclass(frozen=True)
class XsRecipe:
    body: Graph
    order: tuple[int, ...]  # the new body's xs: old xs positions (a tuple: one merged group)


_RECIPES: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()


def merge_gate_xs(graph: Graph) -> Graph:
    subst: dict[Node, Node] = {}
    for s in graph.nodes:
        if s.op != "scan":
            continue
        a, new = s.attrs, s
        cache = _RECIPES.setdefault(a["body"], {})
        key = (a["n_carry"], a["n_xs"])
        if key not in cache:
            cache[key] = _recipe(a["body"], *key)
        if cache[key] is not None:
            subst[s] = new = _apply(s, cache[key])
        weights = _weight_runs(new)
        if weights:
            b = new.attrs
            cache = _WEIGHTS.setdefault(b["body"], {})
            key = (b["n_carry"], b["n_xs"], weights)
            if key not in cache:
                cache[key] = _merged_weights(b["body"], *key)
            subst[s] = new = _with_weights(new, weights, cache[key])
        dead = _unread_invariants(new)
        if dead:
            subst[s] = _without_inputs(new, dead)
    return substitute(graph, subst) if subst else graph


def _unread_invariants(s: Node) -> tuple[int, ...]:
    """The loop's invariant inputs its body never reads (an LSTM reverse loop's W_x, whose
    products were pushed out): each costs the program a slice and the runner an argument."""
    body, first = s.attrs["body"], s.attrs["n_carry"] + s.attrs["n_xs"]
    read = {i for n in body.nodes for i in n.inputs} | set(body.outputs)
    return tuple(k for k in range(first, len(body.inputs)) if body.inputs[k] not in read)


def _without_inputs(s: Node, dead: tuple[int, ...]) -> Node:
    a, body = s.attrs, s.attrs["body"]
    cache = _WEIGHTS.setdefault(body, {})
    key = ("dead", dead)
    if key not in cache:
        inputs = [i for k, i in enumerate(body.inputs) if k not in dead]
        nodes = [n for n in body.nodes if n.op != "input" or n in inputs]
        cache[key] = Graph(nodes, inputs, list(body.outputs), body.meta)
    ins = [i for k, i in enumerate(s.inputs) if k not in dead]
    keep = {k: a[k] for k in ("n_carry", "n_xs", "length", "reverse", "shifted") if k in a}
    return derive(s, "scan", ins, body=cache[key], **keep)


_WEIGHTS: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()


def _weight_runs(s: Node) -> tuple:
    """((input positions, axis), ...): the loop's invariant matmul operands (the per-gate W_k
    or W_k^T) that the body's gate fusion will concatenate along `axis` -- right operands of
    products sharing their left operand (x @ [W_i W_f ...]: the columns) or summed terms
    sum_k g_k @ W_k (the rows) -- and that are adjacent blocks of one array outside along that
    axis: one input, a view of it, then holds them all, the fused operand is a view of it (not
    a copy per loop call), and the program slices it once."""
    body, first = s.attrs["body"], s.attrs["n_carry"] + s.attrs["n_xs"]
    candidates = {body.inputs[k]: k for k in range(first, len(s.inputs)) if s.inputs[k].ndim == 2}
    groups: dict[tuple, list[int]] = {}
    for n in body.nodes:
        terms = [n] if n.op == "matmul" else list(n.inputs) if n.op == "add_n" else []
        found = []
        for m in terms:
            if m.op != "matmul" or m.ndim != 2:
                continue
            w, flipped = m.inputs[1], False
            while w.op == "transpose" and w.ndim == 2:  # (W^T, (W^T)^T, ...)
                w, flipped = w.inputs[0], not flipped
            if w in candidates:
                found.append((m.inputs[0], flipped, candidates[w]))
        if n.op == "matmul" and found:  # grouped by the shared left operand: columns
            left, flipped, k = found[0]
            groups.setdefault(("left", left, flipped), []).append(k)
        elif len(found) >= 2 and len({f for _, f, _ in found}) == 1:  # a sum: rows
            groups[("sum", n, found[0][1])] = [k for _, _, k in found]
    runs, used = [], set()
    for (kind, _, flipped), ks in groups.items():
        ks = sorted(dict.fromkeys(ks))
        if len(ks) < 2 or used & set(ks) or len({s.inputs[k].shape for k in ks}) != 1:
            continue
        axis = (1 if kind == "left" else 0) ^ int(flipped)
        if make_concat(s, [s.inputs[k] for k in ks], axis).op != "concat":
            runs.append((tuple(ks), axis))
            used.update(ks)
    return tuple(runs)


def _merged_weights(body: Graph, nc: int, nx: int, runs: tuple) -> Graph:
    env: dict[Node, Node] = {}
    merged: dict[int, Node] = {}
    views: list[Node] = []
    for ks, axis in runs:
        first = body.inputs[ks[0]]
        shape = list(first.shape)
        shape[axis] *= len(ks)
        block = input_like(first, shape, f"merged_w{ks[0]}")
        merged[ks[0]] = block
        width = first.shape[axis]
        for j, k in enumerate(ks):
            index = [("s", None, None, None)] * 2
            index[axis] = ("s", j * width, (j + 1) * width, None)
            env[body.inputs[k]] = derive(first, "getitem", (block,), index=tuple(index))
            views.append(env[body.inputs[k]])
    gone = {k for ks, _ in runs for k in ks[1:]}
    inputs = [merged.get(k, i) for k, i in enumerate(body.inputs) if k not in gone]
    return _rebuilt(body, inputs, views, env)


def _with_weights(s: Node, runs: tuple, body: Graph) -> Node:
    a = s.attrs
    ins = list(s.inputs)
    for ks, axis in runs:
        ins[ks[0]] = make_concat(s, [s.inputs[k] for k in ks], axis)
    gone = {k for ks, _ in runs for k in ks[1:]}
    ins = [i for k, i in enumerate(ins) if k not in gone]
    keep = {k: a[k] for k in ("n_carry", "n_xs", "length", "reverse", "shifted") if k in a}
    return derive(s, "scan", ins, body=body, **keep)


def _recipe(body: Graph, nc: int, nx: int) -> XsRecipe | None:
    users: dict[Node, list[Node]] = {}
    for n in body.nodes:
        for i in dict.fromkeys(n.inputs):
            users.setdefault(i, []).append(n)
    pos = {n: k for k, n in enumerate(body.nodes)}
    invariants = set(body.inputs[nc + nx :])
    outs = set(body.outputs)
    groups: dict[tuple, list[tuple]] = {}  # (weight position or column block, xs)
    for j in range(nx):
        x = body.inputs[nc + j]
        readers = users.get(x, [])
        add = readers[0] if len(readers) == 1 else None
        if x.ndim != 2 or x in outs or add is None or add.op != "add" or add.shape != x.shape:
            continue
        if add.inputs[0] is add.inputs[1]:
            continue
        side = add.inputs.index(x)
        m, cols = add.inputs[1 - side], None
        if m.op == "getitem":  # a column block of ONE product h @ W (SeqGRU's gh[..., :H])
            cols = _column_block(m)
            m = m.inputs[0] if cols is not None else m
        if m.op != "matmul" or m.ndim != 2 or m.inputs[0].ndim != 2:
            continue
        w = strip_transpose(m.inputs[1])
        if w not in invariants:
            continue
        if cols is None:
            key = ("left", m.inputs[0], x.shape[:-1], x.dtype, side)
            groups.setdefault(key, []).append((pos[w], j))
        else:  # (ordered by column: the adds then are one add over the blocks' span)
            groups.setdefault(("columns", m, x.shape[:-1], x.dtype, side), []).append((cols, j))
    merged = []
    for members in groups.values():
        if len(members) < 2 or len({w for w, _ in members}) != len(members):
            continue
        members.sort()
        if isinstance(members[0][0], tuple) and any(
            a[0][1] != b[0][0] for a, b in itertools.pairwise(members)
        ):
            continue  # (column blocks with a gap or an overlap between them)
        js = tuple(j for _, j in members)
        row = body.inputs[nc + js[0]]
        if sum(body.inputs[nc + j].shape[-1] for j in js) * row.shape[0] * row.dtype.itemsize > (
            SMALL_STEP_BYTES
        ):
            continue
        merged.append(js)
    if not merged:
        return None
    taken = {j for js in merged for j in js}
    order: list = []
    for j in range(nx):
        if j not in taken:
            order.append(j)
        else:
            order.extend(js for js in merged if js[0] == j)
    return XsRecipe(_new_body(body, nc, nx, order), tuple(order))


def _column_block(m: Node) -> tuple[int, int] | None:
    """(start, stop) when getitem m takes whole rows and a block of columns of a 2-d value."""
    ranges = basic_ranges(m) if m.ndim == 2 else None
    if ranges is None or ranges[0] != (0, m.inputs[0].shape[0]):
        return None
    return ranges[1]


def _new_body(body: Graph, nc: int, nx: int, order: list) -> Graph:
    xs = body.inputs[nc : nc + nx]
    new_xs: list[Node] = []
    env: dict[Node, Node] = {}
    views: list[Node] = []
    for item in order:
        if isinstance(item, int):
            new_xs.append(xs[item])
            continue
        parts = [xs[j] for j in item]
        first = parts[0]
        width = sum(p.shape[-1] for p in parts)
        block = input_like(first, (*first.shape[:-1], width), f"merged_xs{len(new_xs)}")
        new_xs.append(block)
        start = 0
        for p in parts:
            stop = start + p.shape[-1]
            index = (("s", None, None, None), ("s", start, stop, None))
            env[p] = derive(p, "getitem", (block,), index=index)
            views.append(env[p])
            start = stop
    inputs = list(body.inputs[:nc]) + new_xs + list(body.inputs[nc + nx :])
    return _rebuilt(body, inputs, views, env)


def _apply(s: Node, recipe: XsRecipe) -> Node:
    a = s.attrs
    nc, nx = a["n_carry"], a["n_xs"]
    xs = []
    for item in recipe.order:
        if isinstance(item, int):
            xs.append(s.inputs[nc + item])
        else:
            pieces = [s.inputs[nc + j] for j in item]
            xs.append(make_concat(s, pieces, axis=pieces[0].ndim - 1))
    ins = list(s.inputs[:nc]) + xs + list(s.inputs[nc + nx :])
    return derive(
        s,
        "scan",
        ins,
        body=recipe.body,
        n_carry=nc,
        n_xs=len(recipe.order),
        length=a["length"],
        reverse=a["reverse"],
        **({"shifted": a["shifted"]} if a.get("shifted") else {}),
    )


def merge_concatenated_ops(graph: Graph) -> Graph:
    """A concat along the last axis of the same elementwise op on column blocks that follow
    each other (after gate fusion, a merged xs: [x @ W_k + b_k for k]) -> that op once on the
    whole blocks (x @ [W_i ...] + [b_i ...]): one call, no copy."""
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op == "concat" and n.ndim == 3 and n.attrs["axis"] in (2, -1):
            one = _one_op(list(n.inputs))
            if one is not None:
                subst[n] = one
    return substitute(graph, subst) if subst else graph


def _one_op(pieces: list[Node]) -> Node | None:
    """The concat of the pieces along their last axis as ONE elementwise op, when each piece is
    the same op on column blocks that follow each other: (T*B, n) blocks reshaped to (T, B, n)
    and (n,) vector blocks -- x @ [W_i ...] + [b_i ...] as one add, not four adds and a copy
    (after gate fusion the input projections are column blocks of one GEMM); else None."""
    first = pieces[0]
    if first.op not in ("add", "sub", "mul") or any(
        p.op != first.op or p.attrs_key != first.attrs_key or p.shape[:-1] != first.shape[:-1]
        for p in pieces
    ):
        return None
    operands = []
    for j in range(len(first.inputs)):
        column = [p.inputs[j] for p in pieces]
        if any(c.shape[-1:] != p.shape[-1:] for c, p in zip(column, pieces)):
            return None  # (a broadcast operand: its blocks are not the pieces' blocks)
        if all(c.ndim == 1 for c in column):  # (vectors: a concat of them is cheap)
            operands.append(make_concat(first, column, axis=0))
            continue
        elif all(
            c.op == "reshape"
            and c.ndim == 3
            and c.inputs[0].ndim == 2
            and c.shape[-1] == (c.inputs[0].shape[-1])
            for c in column
        ):
            merged = make_concat(first, [c.inputs[0] for c in column], axis=1)
        else:
            return None
        if merged.op == "concat":  # (blocks of different values: the pieces stay as they are)
            return None
        operands.append(merged)
    if sum(o.ndim == 2 for o in operands) < 1:
        return None
    rows = next(o.shape[0] for o in operands if o.ndim == 2)
    if rows != first.shape[0] * first.shape[1]:
        return None
    total = derive(first, first.op, operands)
    return derive(first, "reshape", (total,), shape=(*first.shape[:-1], total.shape[-1]))


def _rebuilt(body: Graph, inputs: list, views: list, env: dict) -> Graph:
    """`body` over new `inputs`: the `views` of them first, then every non-input node with its
    inputs substituted through `env` (which maps old nodes to their replacements)."""
    nodes: list[Node] = list(inputs) + views
    for n in body.nodes:
        if n.op == "input":
            continue
        ins = tuple(env.get(i, i) for i in n.inputs)
        env[n] = n if ins == n.inputs else n.with_inputs(ins)
        nodes.append(env[n])
    new = Graph(nodes, inputs, [env.get(o, o) for o in body.outputs], body.meta)
    new.verify()
    return new
