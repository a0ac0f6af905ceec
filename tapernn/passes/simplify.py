"""View simplification: a slice of a slice is one slice, a transpose of a transpose one
transpose (or none), a reshape of a reshape one reshape -- fewer view calls per step once
hoisting and gate fusion have sliced the same product twice (rows per step, columns per gate)."""
from __future__ import annotations

from ..graph import Graph, Node
from .concat import basic_ranges, make_concat, slice_axis
from .rewrite import derive, is_matmul_2d, read_once, substitute


def _simplified(n: Node, x: Node) -> Node | None:
    if n.op == "getitem" and x.op == "getitem" and basic_ranges(n) is not None \
            and basic_ranges(x) is not None and n.ndim == x.ndim == x.inputs[0].ndim:
        result = x
        for axis, (start, stop) in enumerate(basic_ranges(n)):
            if (start, stop) != (0, x.shape[axis]):
                result = slice_axis(n, result, axis, start, stop)
        return result
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


def _canonical_concat(n: Node, pieces: list[Node]) -> Node | None:
    """A concat written by a stage that did not use `make_concat` (the per-block parameter
    gradients of nn.packing: concat(dW_i, dW_f, ...)) in its canonical form, once its pieces
    are views of one product: transpose(P) for concat(P[:, 0:H].T, P[:, H:2H].T, ...)."""
    new = make_concat(n, pieces, axis=n.attrs["axis"])
    if new.op == "concat" and new.inputs == n.inputs:
        return None
    return new


def simplify_views(graph: Graph) -> Graph:
    def visit(n: Node, mapping: dict[Node, Node]) -> Node | None:
        if n.op == "concat":
            return _canonical_concat(n, [mapping.get(i, i) for i in n.inputs])
        if n.op not in ("getitem", "transpose", "reshape"):
            return None
        x = mapping.get(n.inputs[0], n.inputs[0])
        return _simplified(n, x)

    return transposed_products(index_grads_to_concat(graph.rebuild(visit).eliminate_dead_code()))


def transposed_products(graph: Graph) -> Graph:
    """transpose(A @ B) is computed as B^T @ A^T, and transpose(concat(A_k @ B_k, axis=1)) as
    concat(B_k^T @ A_k^T, axis=0), when nothing else reads the products: weight gradients
    (dW = transpose(x^T @ dz) for y = x @ W^T) come out in the parameter's own layout, one
    contiguous array a block's rows can be computed into, not a strided view of the product.
    The GEMMs are the same, with the transposition moved to their operands (BLAS flags), and
    each stays where its product was on the tape (so the stacks it reads die as before)."""
    once = read_once(graph)
    products: dict[Node, list[Node]] = {}  # transpose -> the products it lays out
    dropped: set[Node] = set()  # the column concats of products
    for n in graph.nodes:
        if n.op != "transpose" or n.attrs["axes"] != (1, 0):
            continue
        x = n.inputs[0]
        if is_matmul_2d(x) and once(x):
            products[n] = [x]
        elif x.op == "concat" and x.attrs["axis"] == 1 and once(x) and len(set(x.inputs)) == len(
                x.inputs) and all(is_matmul_2d(p) and once(p) for p in x.inputs):
            products[n] = list(x.inputs)
            dropped.add(x)
    if not products:
        return graph
    flipped: dict[Node, Node | None] = {p: None for ps in products.values() for p in ps}
    mapping: dict[Node, Node] = {}
    nodes: list[Node] = []
    for n in graph.nodes:
        if n in flipped:
            a, b = (mapping.get(i, i) for i in n.inputs)
            operands = (_transposed(n, b, nodes), _transposed(n, a, nodes))
            flipped[n] = derive(n, "matmul", operands)
            nodes.append(flipped[n])
        elif n in products:
            pieces = [flipped[p] for p in products[n]]
            mapping[n] = pieces[0] if len(pieces) == 1 else derive(n, "concat", pieces, axis=0)
            if len(pieces) > 1:
                nodes.append(mapping[n])
        elif n not in dropped:
            ins = tuple([mapping.get(i, i) for i in n.inputs])
            mapping[n] = new = n if ins == n.inputs else n.with_inputs(ins)
            nodes.append(new)
    outputs = [mapping.get(o, o) for o in graph.outputs]
    return Graph(nodes, graph.inputs, outputs, dict(graph.meta))


def _transposed(like: Node, x: Node, nodes: list[Node]) -> Node:
    if x.op == "transpose" and x.attrs["axes"] == (1, 0):
        return x.inputs[0]
    t = derive(like, "transpose", (x,), axes=(1, 0))
    nodes.append(t)
    return t


def _block(t: Node, shape: tuple) -> tuple[int, int, int] | None:
    """(axis, start, stop) when index_grad t scatters into one basic block of `shape` that is
    full on every axis but one, else None."""
    if t.op != "index_grad" or tuple(t.attrs["shape"]) != shape:
        return None
    probe = Node("getitem", (Node("input", (), {}, shape, t.dtype),), {"index": t.attrs["index"]},
                 t.inputs[0].shape, t.dtype)
    ranges = basic_ranges(probe)
    if ranges is None:
        return None
    partial = [k for k, (a, b) in enumerate(ranges) if (a, b) != (0, shape[k])]
    if len(partial) > 1:
        return None
    axis = partial[0] if partial else 0
    return (axis, *ranges[axis])


def index_grads_to_concat(graph: Graph) -> Graph:
    """add_n(index_grad(g_k, S, blocks tiling S along one axis)) == concat(g_k): the per-gate
    gradients of a split gate block are joined with one copy instead of zero-filling S per
    gate, scattering each block and adding the full-size pieces together."""
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op != "add_n" or len(set(n.inputs)) != len(n.inputs):
            continue
        blocks = [_block(t, n.shape) for t in n.inputs]
        if any(b is None for b in blocks) or len({b[0] for b in blocks}) != 1:
            continue
        order = sorted(range(len(blocks)), key=lambda k: blocks[k][1])
        edges = [blocks[k][1:] for k in order]
        axis = blocks[0][0]
        if edges[0][0] != 0 or edges[-1][1] != n.shape[axis] or any(
                a[1] != b[0] for a, b in zip(edges, edges[1:])):
            continue
        subst[n] = make_concat(n, [n.inputs[k].inputs[0] for k in order], axis=axis)
    return substitute(graph, subst)
