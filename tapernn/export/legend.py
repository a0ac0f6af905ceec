"""The key to a diagram's colours: one sample per node role and edge kind the diagram uses, in a
"legend" cluster beside it.
"""

from __future__ import annotations

import graphviz

from .source import Drawing
from .style import CLUSTER_ATTRS, EDGE_KIND_ATTRS, fused_ops, role_attrs

ROLE_TEXT = {
    "data": "data in",
    "state": "initial state",
    "param": "parameter",
    "op": "op",
    "fused": "fused ops: one kernel",
    "output": "output",
    "seed": "gradient in (seed)",
    "backward": "backward op",
    "gradient": "gradient out",
    "context": "forward value the backward reads",
}
EDGE_TEXT = {
    "recurrent": "━━  state to the next step",
    "backward": "╌╌  gradient flow (backward)",
    "param": "──  parameter read",
    "context": "┈┈  read by the backward",
}


def add_legend(dot: graphviz.Digraph, d: Drawing, level: str) -> None:
    """Append the legend cluster for the roles and edge kinds present in `d`."""
    roles = {d.roles[n] for n in d.nodes}
    if any(fused_ops(n) for n in d.nodes):
        roles.add("fused")
    if level == "module":
        roles &= {"data", "state", "output", "seed", "gradient"}
        roles |= {"op"} | ({"backward"} if any(n.phase == "backward" for n in d.nodes) else set())
    kinds = _edge_kinds(d, level)
    with dot.subgraph(name="cluster_legend") as c:
        c.attr(label="legend", **dict(CLUSTER_ATTRS, fillcolor="white"))
        with c.subgraph() as column:
            column.attr(rank="same")
            for role, text in ROLE_TEXT.items():
                if role in roles:
                    attrs = role_attrs(role)
                    attrs.update(label=text, fontsize="9")
                    column.node(f"legend_{role}", **attrs)
            for kind, text in EDGE_TEXT.items():
                if kind in kinds:
                    column.node(
                        f"legend_edge_{kind}",
                        label=text,
                        shape="plaintext",
                        style="",
                        fontsize="9",
                        fontcolor=EDGE_KIND_ATTRS[kind].get("color", "#555555"),
                    )


def _edge_kinds(d: Drawing, level: str) -> set[str]:
    from .ops_view import edge_kind

    kinds = set()
    for u, v, _ in d.edges:
        kind = edge_kind(d, u, v)
        kinds.add(
            "recurrent"
            if kind == "recurrent"
            else "backward"
            if kind in ("backward", "recurrent_backward")
            else kind
        )
    if level == "module":
        kinds.discard("param")
    return kinds
