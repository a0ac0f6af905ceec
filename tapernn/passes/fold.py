"""Constant folding: nodes whose inputs are all constants are evaluated at compile time when the
result is small (<= FOLD_LIMIT elements), so big fills stay lazy `zeros`/`ones` nodes."""

from __future__ import annotations

import numpy as np

from ..graph import Graph, Node
from ..ops.registry import get_op

FOLD_LIMIT = 4096


def _foldable(n: Node, ins: tuple[Node, ...]) -> bool:
    if n.op in ("input", "constant"):
        return False
    for i in ins:
        if i.op != "constant":
            return False
    return n.size <= FOLD_LIMIT


def fold_constants(graph: Graph) -> Graph:
    # folding only cascades from a node foldable as the graph stands: without one, skip the
    # rebuild (one scan instead of rebuilding every node)
    if not any(_foldable(n, n.inputs) for n in graph.nodes):
        return graph.eliminate_dead_code()

    def visit(n: Node, mapping: dict[Node, Node]) -> Node | None:
        ins = tuple([mapping.get(i, i) for i in n.inputs])
        if not _foldable(n, ins):
            return None
        value = get_op(n.op).forward(*[i.value for i in ins], **n.attrs)
        value = np.array(value, dtype=n.dtype).reshape(n.shape)  # own it: never a view
        return Node(
            "constant",
            (),
            {},
            n.shape,
            n.dtype,
            step=n.step,
            scope=n.scope,
            phase=n.phase,
            value=value,
        )

    return graph.rebuild(visit).eliminate_dead_code()
