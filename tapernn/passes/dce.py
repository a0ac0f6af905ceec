"""Dead-code elimination: drop nodes no output depends on (graph inputs always stay, so the
calling convention never changes)."""

from __future__ import annotations

from ..graph import Graph


def eliminate_dead_code(graph: Graph) -> Graph:
    return graph.eliminate_dead_code()
