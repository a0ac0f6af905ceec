"""DOT diagrams (via the `graphviz` package) and node-link JSON of graphs, programs and modules."""
from __future__ import annotations

from typing import Any

import graphviz
import networkx as nx

from ..errors import TapernnError
from .source import collapse_steps, resolve, select

LEVELS = ("op", "module")
CLUSTERINGS = ("step", "scope")


def to_dot(obj: Any, level: str = "op", view: str = "forward", compiled: bool = False,
           cluster_by: str = "step", collapse: bool = False,
           title: str | None = None) -> graphviz.Digraph:
    """A Graphviz diagram of an unrolled graph, one cluster per timestep.

    Parameters
    ----------
    obj : Graph, Compiled, or a module after forward (anything with a ``.graph``)
        A Compiled draws its optimised graph (fused nodes as one box; buffer ids on edges when
        its plan exposes them). With ``compiled=True`` a module draws ``module.compiled``.
    level : "op" draws every node; "module" draws one box per (module, step).
    view : "forward", "backward" (plus the forward values it reads, greyed) or "both".
    cluster_by : "step" (clusters ``cluster_step_t`` left to right) or "scope" (nested clusters
        per dotted module path).
    collapse : draw each class of identical steps once, captioned "t = 1 … 99  ×99", with the
        recurrent edges looping back into it; fast for long sequences.
    title : a caption on top of the diagram.

    Shapes: labels show each value's shape as "batch×hidden"; node ids are ``n<tape position>``,
    so the DOT text is deterministic for a given graph.
    """
    if level not in LEVELS:
        raise TapernnError(f"level must be one of {LEVELS}, got {level!r}")
    if cluster_by not in CLUSTERINGS:
        raise TapernnError(f"cluster_by must be one of {CLUSTERINGS}, got {cluster_by!r}")
    graph, program = resolve(obj, compiled)
    drawing = select(graph, view, program)
    if collapse:
        drawing = collapse_steps(drawing)
    if level == "module":
        from .modules_view import draw_modules
        return draw_modules(drawing, cluster_by, title)
    from .ops_view import draw_ops
    return draw_ops(drawing, cluster_by, title)


def to_json(obj: Any) -> dict:
    """Node-link data of the graph (`networkx.node_link_data`), JSON-serialisable.

    Each node carries op, shape, dtype, step, scope, phase, name, kind and attrs; each edge its
    argument position. `networkx.node_link_graph(data, edges="edges")` rebuilds the graph.
    """
    graph, _ = resolve(obj)
    return nx.node_link_data(graph.to_networkx(), edges="edges")
