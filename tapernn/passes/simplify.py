"""View simplification: a slice of a slice is one slice, a transpose of a transpose one
transpose (or none), a reshape of a reshape one reshape -- fewer view calls per step once
hoisting and gate fusion have sliced the same product twice (rows per step, columns per gate)."""

from __future__ import annotations

import itertools
import weakref

from ..graph import Graph, Node
from .concat import _ranges, basic_ranges, make_concat, slice_axis
from .rewrite import derive, is_matmul_2d, is_zero, read_once, substitute, zeros_like_node


def _simplified(n: Node, x: Node) -> Node | None:
    if x.op == "zeros":  # a view of zeros: zeros of its shape
        return zeros_like_node(n)
    if (
        n.op == "getitem"
        and x.op == "getitem"
        and basic_ranges(n) is not None
        and basic_ranges(x) is not None
        and n.ndim == x.ndim == x.inputs[0].ndim
    ):
        result = x
        for axis, (start, stop) in enumerate(basic_ranges(n)):
            if (start, stop) != (0, x.shape[axis]):
                result = slice_axis(n, result, axis, start, stop)
        return result
    if n.op == "getitem" and x.op == "index_grad":
        return _slice_of_scatter(n, x)
    if n.op == "transpose" and x.op == "transpose":
        axes = tuple(x.attrs["axes"][a] for a in n.attrs["axes"])
        inner = x.inputs[0]
        if axes == tuple(range(len(axes))):
            return inner
        return n.replace(inputs=(inner,), attrs={"axes": axes})
    if n.op == "reshape" and x.op == "reshape":
        inner = x.inputs[0]
        return inner if inner.shape == n.shape else n.replace(inputs=(inner,))
    return None


def _slice_of_scatter(n: Node, x: Node) -> Node | None:
    """index_grad(g, S, idx)[idx] is g; a block of it disjoint from idx is zeros (a rolled
    loop's output gradient is scattered into the shape of its slab of saved values, and the
    reverse loop reads it back block by block: without this, two slab-sized zero-padded
    copies of the seed)."""
    outer, inner = basic_ranges(n), _ranges(x.attrs["index"], tuple(x.attrs["shape"]))
    if outer is None or inner is None or n.ndim != x.ndim:
        return None
    g = x.inputs[0]
    if list(inner) == outer and g.shape == n.shape:
        return g
    if any(b <= c or d <= a for (a, b), (c, d) in zip(outer, inner)):
        return zeros_like_node(n)
    return None


_ZERO_XS: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()


def _zero_xs_inside(s: Node, ins: tuple[Node, ...]) -> Node | None:
    """A scan reading an all-zero xs (a reverse loop's seed for a state nothing downstream
    reads, once `_slice_of_scatter` has shown it zero): the body reads zeros in its place
    (its own pipeline folds them away), so no (length, ...) array of zeros is made and sliced.
    The new body is made once per (body, positions): its compiled program stays cached."""
    a = s.attrs
    nc, nx = a["n_carry"], a["n_xs"]
    zero = tuple(k for k in range(nc, nc + nx) if is_zero(ins[k]))
    if not zero:
        return None
    body = a["body"]
    cache = _ZERO_XS.setdefault(body, {})
    if zero not in cache:
        gone = {body.inputs[k]: zeros_like_node(body.inputs[k]) for k in zero}
        inner = Graph(body.nodes, body.inputs, body.outputs, body.meta).rebuild(
            lambda n, mapping: gone.get(n)
        )
        inputs = [i for k, i in enumerate(body.inputs) if k not in zero]
        cache[zero] = Graph(inner.nodes, inputs, inner.outputs, body.meta).eliminate_dead_code()
    keep = {k: a[k] for k in ("n_carry", "length", "reverse", "shifted") if k in a}
    rest = tuple(i for k, i in enumerate(ins) if k not in zero)
    return derive(s, "scan", rest, body=cache[zero], n_xs=nx - len(zero), **keep)


def _canonical_concat(n: Node, pieces: list[Node]) -> Node | None:
    """A concat written by a stage that did not use `make_concat` (the per-block parameter
    gradients of nn.packing: concat(dW_i, dW_f, ...)) in its canonical form, once its pieces
    are views of one product: transpose(P) for concat(P[:, 0:H].T, P[:, H:2H].T, ...)."""
    new = make_concat(n, pieces, axis=n.attrs["axis"])
    if new.op == "concat" and new.inputs == n.inputs:
        return None
    return new


def simplify_views(graph: Graph) -> Graph:
    """Every view rewrite, in DEFAULT's order (DEFAULT lists them one by one)."""
    for rewrite in (simplify_view_chains, index_grads_to_concat, flip_transposed_products):
        graph = rewrite(graph)
    return graph


def simplify_view_chains(graph: Graph) -> Graph:
    """A slice of a slice, a transpose of a transpose, a reshape of a reshape: one view."""
    return graph.rebuild(_visitor(set())).eliminate_dead_code()


def flip_transposed_products(graph: Graph) -> Graph:
    """transpose(A @ B) read only by the transpose -> B^T @ A^T (see transposed_products);
    the products to flip show once the concats are canonical (transpose(concat_1(P_k)))."""
    flip = transposed_products(graph)
    return graph.rebuild(_visitor(flip)).eliminate_dead_code() if flip else graph


def _visitor(flip: set[Node]):
    def visit(n: Node, mapping: dict[Node, Node]) -> Node | None:
        if n in flip:  # transpose(B^T @ A^T): the transposes around it then cancel
            a, b = (mapping.get(i, i) for i in n.inputs)
            product = derive(n, "matmul", (_transposed(n, b), _transposed(n, a)))
            return derive(n, "transpose", (product,), axes=(1, 0))
        if n.op == "concat":
            return _canonical_concat(n, [mapping.get(i, i) for i in n.inputs])
        if n.op == "scan":
            return _zero_xs_inside(n, tuple([mapping.get(i, i) for i in n.inputs]))
        if n.op not in ("getitem", "transpose", "reshape"):
            return None
        return _simplified(n, mapping.get(n.inputs[0], n.inputs[0]))

    return visit


def transposed_products(graph: Graph) -> set[Node]:
    """The 2-D products nothing reads but a transpose, transpose(A @ B), or a column concat
    of such products read only by a transpose, transpose(concat(A_k @ B_k, axis=1)): computed
    as B^T @ A^T (and the concat as concat(B_k^T @ A_k^T, axis=0)), weight gradients (dW =
    transpose(x^T @ dz) for y = x @ W^T) come out in the parameter's own layout, one contiguous
    array a block's rows can be computed into, not a strided view of the product. The GEMMs are
    the same, with the transposition moved to their operands (BLAS flags); each stays where its
    product was on the tape, so the stacks it reads die as before."""
    once = read_once(graph)
    reader: dict[Node, Node] = {}
    for n in graph.nodes:
        for i in n.inputs:
            reader[i] = n
    flip: set[Node] = set()
    for n in graph.nodes:
        if n.op != "transpose" or n.attrs["axes"] != (1, 0):
            continue
        x = n.inputs[0]
        if is_matmul_2d(x) and once(x):
            flip.add(x)
        elif (
            x.op == "concat"
            and x.attrs["axis"] == 1
            and once(x)
            and all(is_matmul_2d(p) and once(p) and reader[p] is x for p in x.inputs)
        ):
            flip.update(x.inputs)
    return flip


def _transposed(like: Node, x: Node) -> Node:
    if x.op == "transpose" and x.attrs["axes"] == (1, 0):
        return x.inputs[0]
    return derive(like, "transpose", (x,), axes=(1, 0))


def _scatter_ranges(t: Node, shape: tuple) -> list[tuple[int, int]] | None:
    """Per-axis (start, stop) of the basic block of `shape` index_grad t scatters into."""
    if t.op != "index_grad" or tuple(t.attrs["shape"]) != shape:
        return None
    probe = Node(
        "getitem",
        (Node("input", (), {}, shape, t.dtype),),
        {"index": t.attrs["index"]},
        t.inputs[0].shape,
        t.dtype,
    )
    ranges = basic_ranges(probe)
    if ranges is None or [b - a for a, b in ranges] != list(t.inputs[0].shape):
        return None
    return ranges


def scatter_block(t: Node, shape: tuple) -> tuple[int, int, int] | None:
    """(axis, start, stop) when index_grad t scatters into one basic block of `shape` that is
    full on every axis but one, else None."""
    ranges = _scatter_ranges(t, shape)
    if ranges is None:
        return None
    partial = [k for k, (a, b) in enumerate(ranges) if (a, b) != (0, shape[k])]
    if len(partial) > 1:
        return None
    axis = partial[0] if partial else 0
    return (axis, *ranges[axis])


def index_grads_to_concat(graph: Graph) -> Graph:
    """add_n(index_grad(g_k, S, blocks tiling S)) == concat(g_k): the per-gate gradients of a
    split gate block are joined with one copy instead of zero-filling S per gate, scattering
    each block and adding the full-size pieces together. Blocks cut S along one axis, or
    along one axis and then each part along another (SeqGRU's weight: [W_x; [W_h[r, u]
    W_h[c]]], nested concats), any depth."""
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op != "add_n" or len(set(n.inputs)) != len(n.inputs):
            continue
        ranges = [_scatter_ranges(t, n.shape) for t in n.inputs]
        if any(r is None for r in ranges):
            continue
        blocks = [(tuple(r), t.inputs[0]) for r, t in zip(ranges, n.inputs)]
        joined = _tiled(n, blocks, tuple((0, d) for d in n.shape))
        if joined is not None:
            subst[n] = joined
    return substitute(graph, subst)


def _tiled(like: Node, blocks: list, region: tuple) -> Node | None:
    """The value whose (ranges, value) blocks tile `region` ((start, stop) per axis) exactly,
    as concats: cut along the first axis whose ranges fall into >= 2 runs following each
    other across it, each run tiled the same way; None when they do not tile it so."""
    if len(blocks) == 1:
        ranges, value = blocks[0]
        return value if tuple(ranges) == tuple(region) else None
    for axis, (lo, hi) in enumerate(region):
        runs: dict[tuple[int, int], list] = {}
        for r, v in blocks:
            runs.setdefault(r[axis], []).append((r, v))
        edges = sorted(runs)
        if len(edges) < 2 or edges[0][0] != lo or edges[-1][1] != hi:
            continue
        if any(a[1] != b[0] for a, b in itertools.pairwise(edges)):
            continue
        parts = []
        for edge in edges:
            part = _tiled(like, runs[edge], region[:axis] + (edge,) + region[axis + 1 :])
            if part is None:
                return None
            parts.append(part)
        return make_concat(like, parts, axis=axis)
    return None
