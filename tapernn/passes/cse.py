"""Common-subexpression elimination: nodes with equal (op, inputs, attrs) become one; constants
merge by value; inputs never merge. One pass over the tape with a dict, so linear time."""
from __future__ import annotations

from ..graph import Graph, Node


def _key(n: Node, ins: tuple[Node, ...]) -> tuple | None:
    if n.op == "input":
        return None
    if n.op == "constant":
        v = n.value
        return ("constant", v.dtype.str, v.shape, v.tobytes())
    return (n.op, ins, n.attrs_key)  # nodes hash by identity: `ins` keys the operands themselves


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    table: dict[tuple, Node] = {}

    def visit(n: Node, mapping: dict[Node, Node]) -> Node | None:
        ins = tuple([mapping.get(i, i) for i in n.inputs])
        if n.op == "input":
            return None
        key = _key(n, ins)
        if key in table:
            return table[key]  # the first occurrence keeps its own step/scope
        new = n if ins == n.inputs else n.with_inputs(ins)
        table[key] = new
        return new

    return graph.rebuild(visit).eliminate_dead_code()
