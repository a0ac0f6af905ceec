"""Common-subexpression elimination: nodes with equal (op, inputs, attrs) become one; constants
merge by value; inputs never merge. One pass over the tape with a dict, so linear time."""

from __future__ import annotations

from ..graph import Graph, Node


def _key(n: Node, ins: tuple[Node, ...]) -> tuple:
    if n.op == "constant":
        v = n.value
        return ("constant", v.dtype.str, v.shape, v.tobytes())
    return (n.op, ins, n.attrs_key)  # nodes hash by identity: `ins` keys the operands themselves


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    # Graph.rebuild specialised (the most frequent pass): a node's operands are mapped before
    # it, and a merged node maps to its first occurrence, already on the new tape
    table: dict[tuple, Node] = {}
    mapping: dict[Node, Node] = {}
    nodes: list[Node] = []
    changed = False
    for n in graph.nodes:
        if n.op == "input":
            mapping[n] = n
            nodes.append(n)
            continue
        ins = tuple([mapping.get(i, i) for i in n.inputs])
        key = _key(n, ins)
        new = table.get(key)
        if new is None:  # the first occurrence keeps its own step/scope
            new = table[key] = n if ins == n.inputs else n.with_inputs(ins)
            nodes.append(new)
        mapping[n] = new
        if new is not n:
            changed = True
    if not changed:
        return graph.eliminate_dead_code()
    return Graph(
        nodes,
        [mapping.get(n, n) for n in graph.inputs],
        [mapping.get(n, n) for n in graph.outputs],
        graph.meta,
    ).eliminate_dead_code()
