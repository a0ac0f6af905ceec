"""Known-zero propagation: values that are certainly zero (`zeros` nodes, all-zero constants)
flow through the ops that keep them zero or pass their other operand on, so e.g. the backward of
an acceptor whose per-step output gradients are zero folds away. `specialize_inputs` turns named
inputs into such zeros. (0 * inf is taken as 0 here, as every autodiff system does.)"""

from __future__ import annotations

from ..errors import ArgumentError
from ..graph import Graph, Node
from ..ops.registry import get_op
from .rewrite import derive, is_zero, zeros_like_node


def _rewrite(n: Node, ins: tuple[Node, ...]) -> Node | None:
    """n's replacement when some of `ins` are known zeros, by its op's zero rule (OpDef.zero)."""
    zero = [is_zero(i) for i in ins]
    if not any(zero):
        return None
    rule = get_op(n.op).zero
    if (
        (rule == "first" and zero[0])
        or rule == "any"
        or (rule == "all" and all(zero))
        or (rule == "branches" and zero[1] and zero[2])
    ):
        return zeros_like_node(n)
    if rule == "sum" or rule == "difference":
        terms = [
            (i, k > 0 and rule == "difference") for k, (i, z) in enumerate(zip(ins, zero)) if not z
        ]
        if not terms:
            return zeros_like_node(n)
        if len(terms) > 1:  # add_n of several non-zero terms
            return derive(n, n.op, [i for i, _ in terms])
        other, negated = terms[0]
        if negated:
            other = derive(n, "neg", (other,))
        if other.dtype != n.dtype:  # e.g. int + float zeros: the sum was float
            other = derive(n, "cast", (other,), dtype=n.dtype.str)
        return (
            other if other.shape == n.shape else derive(n, "broadcast_to", (other,), shape=n.shape)
        )
    return None


def propagate_zeros(graph: Graph) -> Graph:
    # known zeros only start at zeros nodes and all-zero constants: without any, no node changes
    # (a backward program usually has none), so skip the rebuild
    if not any(n.op == "zeros" or (n.op == "constant" and is_zero(n)) for n in graph.nodes):
        return graph.eliminate_dead_code()
    zero: dict[Node, bool] = {}  # is_zero per operand, once (np.any on every constant use)

    def visit(n: Node, mapping: dict[Node, Node]) -> Node | None:
        if n.op in ("input", "constant", "zeros"):
            return None
        ins = tuple([mapping.get(i, i) for i in n.inputs])
        for i in ins:
            z = zero.get(i)
            if z is None:
                z = zero[i] = is_zero(i)
            if z:
                return _rewrite(n, ins)
        return None if ins == n.inputs else n.with_inputs(ins)

    return graph.rebuild(visit).eliminate_dead_code()


def specialize_inputs(graph: Graph, values: dict[str, str]) -> Graph:
    """Replace every use of the named inputs by a known value (only "zeros" so far) and
    propagate it. The inputs stay in `graph.inputs`, so callers pass the same arrays as before
    (the specialised ones are ignored)."""
    targets = {}
    for name, kind in values.items():
        if kind != "zeros":
            raise ArgumentError(f"specialize_inputs: only 'zeros' is supported, got {kind!r}")
        node = graph.input_named(name)
        targets[node] = zeros_like_node(node)

    def visit(n: Node, mapping: dict[Node, Node]) -> Node | None:
        if n.op == "input":
            return None
        ins = tuple(targets.get(i, mapping.get(i, i)) for i in n.inputs)
        return None if ins == n.inputs else n.replace(inputs=ins)

    out = graph.rebuild(visit).copy()  # rebuild places each zeros node before its first reader
    for k, o in enumerate(out.outputs):
        if o in targets:
            out.outputs[k] = targets[o]
            if targets[o] not in out.nodes:
                out.nodes.append(targets[o])
    return propagate_zeros(out)
