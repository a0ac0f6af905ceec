"""DOT diagrams (via the `graphviz` package) and node-link JSON of graphs, programs and modules."""

from __future__ import annotations

from typing import Any

import graphviz

from ..errors import ArgumentError, StateError
from ..graph import Graph
from .compiled import pair_drawing, training_pair
from .legend import add_legend
from .source import VIEWS, collapse_steps, resolve, select

LEVELS = ("op", "module")
CLUSTERINGS = ("step", "scope")


def to_dot(
    obj: Any,
    level: str = "op",
    view: str = "forward",
    compiled: bool = False,
    cluster_by: str = "step",
    collapse: bool = False,
    title: str | None = None,
    legend: bool | None = None,
) -> graphviz.Digraph:
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
    collapse : draw each class of identical steps once, captioned "t = 0 … 99  ×100", with the
        recurrent edges looping back into it; fast for long sequences.
    title : a caption on top of the diagram.
    legend : a key to the colours and line styles used (default: on for compiled programs).

    A module after a training forward draws, with ``compiled=True``, its forward program
    (view "forward"), its backward program ("backward") or both joined where the backward
    reads the values the forward saved ("both"). Compiled nodes are labelled by what they
    compute (op or fused ops, shape) with a second line naming the output, "saved for
    backward" and the buffer the value lives in (b3: preallocated buffer 3).

    Shapes: labels show each value's shape as "batch×hidden"; node ids are ``n<tape position>``,
    so the DOT text is deterministic for a given graph.
    """
    if level not in LEVELS:
        raise ArgumentError(f"level must be one of {LEVELS}, got {level!r}")
    if cluster_by not in CLUSTERINGS:
        raise ArgumentError(f"cluster_by must be one of {CLUSTERINGS}, got {cluster_by!r}")
    pair = training_pair(obj) if compiled and not isinstance(obj, Graph) else None
    if pair is not None:
        drawing = pair_drawing(pair, select_view(view))
    else:
        graph, program = resolve(obj, compiled)
        drawing = select(graph, view, program)
    if not drawing.nodes:
        raise StateError(
            f"the {view} view of this {'program' if drawing.programs else 'graph'}"
            f" is empty: it has no {view} nodes (draw a module after forward and "
            f"backward, or a graph from tn.grad, for the backward view)"
        )
    if collapse:
        drawing = collapse_steps(drawing)
    if level == "module":
        from .modules_view import draw_modules

        dot = draw_modules(drawing, cluster_by, title)
    else:
        from .ops_view import draw_ops

        dot = draw_ops(drawing, cluster_by, title)
    if legend if legend is not None else bool(drawing.programs):
        add_legend(dot, drawing, level)
    return dot


def select_view(view: str) -> str:
    if view not in VIEWS:
        raise ArgumentError(f"view must be one of {VIEWS}, got {view!r}")
    return view


def to_json(obj: Any) -> dict:
    """Node-link data of the graph (`networkx.node_link_data`), JSON-serialisable.

    Each node carries op, shape, dtype, step, scope, phase, name, kind and attrs; each edge its
    argument position. `networkx.node_link_graph(data, edges="edges")` rebuilds the graph.
    """
    import networkx as nx  # (here, as in views.to_networkx: off `import tapernn`'s path)

    graph, _ = resolve(obj)
    return nx.node_link_data(graph.to_networkx(), edges="edges")
