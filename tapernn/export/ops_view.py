"""The op-level diagram: one box per node, one cluster per timestep (or per module scope).

Layout trick: backward edges are emitted head-to-tail with `dir=back`, so BPTT runs right to left
under the forward pass it mirrors instead of folding the step clusters back onto themselves.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

import graphviz

from ..graph import Node
from ..views import format_node
from .buses import route_buses
from .source import Drawing, output_name
from .style import (
    CLUSTER_ATTRS,
    EDGE_ATTRS,
    EDGE_KIND_ATTRS,
    GRAPH_ATTRS,
    NODE_ATTRS,
    escaped,
    fused_ops,
    node_label,
    role_attrs,
)

# dot's x-coordinate network simplex is superlinear; on big drawings a few passes of it place
# nodes nearly as well (T=20 LSTM with BPTT: 6.8 s -> 2.1 s). Crossing minimisation is the next
# cost: a third of its iterations drew a T=12 LSTM with BPTT indistinguishably and took the
# T=100, H=256 one (9,225 nodes) from 35.0 s to 12.3 s of `dot -Tsvg`.
LARGE_DRAWING = 1000
LARGE_GRAPH_ATTRS = {"nslimit": "0.1", "mclimit": "0.3"}


def new_digraph(title: str | None = None, large: bool = False) -> graphviz.Digraph:
    graph_attr = dict(GRAPH_ATTRS, **LARGE_GRAPH_ATTRS) if large else dict(GRAPH_ATTRS)
    dot = graphviz.Digraph(
        "tapernn", graph_attr=graph_attr, node_attr=dict(NODE_ATTRS), edge_attr=dict(EDGE_ATTRS)
    )
    if title:
        dot.attr(**escaped({"label": title}), labelloc="t", fontsize="14")
    return dot


def draw_ops(d: Drawing, cluster_by: str = "step", title: str | None = None) -> graphviz.Digraph:
    """Op-level DOT for a Drawing (see `tapernn.export.to_dot`)."""
    dot = new_digraph(title, large=len(d.nodes) > LARGE_DRAWING)
    num = {n: k for k, n in enumerate(d.graph.nodes)}
    attrs = {n: escaped(_node_attrs(d, n, num)) for n in d.nodes}
    edges = edge_list(d)
    if cluster_by == "step":
        clusters = {d.ids[n]: step_of(d, n) for n in d.nodes}
        edges, points = route_buses(edges, clusters)
        _place_by_step(dot, d, attrs, points, edges)
    else:
        from .scopes import place_by_scope

        # (each module's cluster named by its description: "FastLSTM(3 -> 4, mask_zero)  (0.0)")
        names = {s: str(text).replace("nn.", "") for s, text in d.graph.meta.scopes.items() if text}
        place_by_scope(
            dot, d.nodes, lambda n: n.scope, lambda g, n: g.node(d.ids[n], **attrs[n]), names
        )
    for u, v, edge_attrs in edges:
        dot.edge(u, v, **edge_attrs)
    return dot


def step_of(d: Drawing, n: Node) -> int | None:
    """The cluster a node sits in: parameters never sit in a step, they are shared by all."""
    return None if d.roles[n] == "param" or n in d.initial else n.step


def _place_by_step(
    dot: graphviz.Digraph,
    d: Drawing,
    attrs: dict[Node, dict],
    points: dict[int, list[tuple[str, dict]]],
    edges: list,
) -> None:
    clusters: dict[int, list[tuple[str, dict]]] = {}
    for n in d.nodes:
        t = step_of(d, n)
        if t is None:
            dot.node(d.ids[n], **attrs[n])
        else:
            clusters.setdefault(t, []).append((d.ids[n], attrs[n]))
    for t, junctions in points.items():
        clusters.setdefault(t, []).extend(junctions)
    for t in sorted(clusters):
        with dot.subgraph(name=f"cluster_step_{t}") as c:
            c.attr(label=d.step_label.get(t, f"t = {t}"), **CLUSTER_ATTRS)
            for name, node_attrs in clusters[t]:
                c.node(name, **node_attrs)
    order_steps(
        dot, {t: [name for name, _ in ms] for t, ms in clusters.items()}, constraining(edges)
    )


def constraining(edges: list) -> list[tuple[str, str]]:
    """(tail, head) of the edges dot ranks by, as emitted."""
    return [(u, v) for u, v, a in edges if a.get("constraint") != "false"]


def order_steps(
    dot: graphviz.Digraph, members: dict[int, list[str]], edges: list[tuple[str, str]]
) -> None:
    """Keep step clusters in separate columns, t=0 … T-1 left to right.

    Without this dot starts every step's input nodes at the left and the clusters slide into a
    staircase. Between consecutive steps an invisible hub node takes an edge from every last node
    of step a and gives one to every first node of step b (linear in size, unlike all pairs).
    """
    step_of = {m: t for t, ms in members.items() for m in ms}
    has_out = {
        u for u, v in edges if step_of.get(u) is not None and step_of.get(u) == step_of.get(v)
    }
    has_in = {
        v for u, v in edges if step_of.get(u) is not None and step_of.get(u) == step_of.get(v)
    }
    steps = sorted(members)
    for a, b in pairwise(steps):
        tails = [m for m in members[a] if m not in has_out]
        heads = [m for m in members[b] if m not in has_in]
        if len(tails) * len(heads) <= 64:
            for m in tails:
                for h in heads:
                    dot.edge(m, h, style="invis", weight="0")
            continue
        hub = f"order_{a}_{b}"
        dot.node(hub, label="", shape="point", style="invis", width="0", height="0")
        for m in tails:
            dot.edge(m, hub, style="invis", weight="0")
        for m in heads:
            dot.edge(hub, m, style="invis", weight="0")


def _node_attrs(d: Drawing, n: Node, num: dict[Node, int]) -> dict[str, str]:
    role = "fused" if fused_ops(n) and d.roles[n] in ("op", "backward") else d.roles[n]
    attrs = role_attrs(role)
    name = output_name(d.graph, n) if d.roles[n] in ("output", "gradient") else None
    if name and "×" in d.step_label.get(n.step, ""):
        name = re.sub(r"_?\d+$", "", name) + "_t"  # a folded template stands for every step
    label = node_label(n, name)
    if d.programs:  # what it computes, then where the value lives
        from .compiled import detail_line

        detail = detail_line(d, n)
        if n.step is not None and n.op != "input":
            label += f"  t={n.step}"
        if detail:
            label += f"\n{detail}"
    if n in d.initial:
        label += f"\nat t = {n.step}"  # the initial value a folded recurrence starts from
    elif n.step is not None and "×" in d.step_label.get(n.step, ""):
        label = label.replace(f"[{n.step}]", "[t]", 1)  # getitem [0] stands for x[t]
    if role == "context":
        label = label.split("\n")[0]
    attrs["label"] = label
    attrs["tooltip"] = format_node(n, num)
    return attrs


def edge_kind(d: Drawing, u: Node, v: Node) -> str:
    """plain / param / recurrent / backward / recurrent_backward / context for the edge u -> v."""
    if d.roles[u] == "param" and v.phase == "forward":
        return "param"
    crosses = u.step is not None and v.step is not None and u.step != v.step
    if v.phase == "backward":
        if u.phase == "forward":
            return "context"
        return "recurrent_backward" if crosses else "backward"
    return "recurrent" if crosses else "plain"


def merge_edges(d: Drawing) -> dict[tuple[Node, Node, str], int]:
    """(stand-in tail, stand-in head, kind) -> how many graph edges it stands for, in tape order."""
    merged: dict[tuple[Node, Node, str], int] = {}
    for u, v, _pos in d.edges:
        key = (d.rep[u], d.rep[v], edge_kind(d, u, v))
        merged[key] = merged.get(key, 0) + 1
    return merged


def edge_list(d: Drawing) -> list[tuple[str, str, dict]]:
    """(tail id, head id, attrs) as emitted: backward edges reversed with dir=back."""
    buffers = buffer_ids(d.compiled)
    out = []
    merged = merge_edges(d)
    pairs = {(u, v) for u, v, _kind in merged}
    for (u, v, kind), count in merged.items():
        if kind == "context" and d.step_label:
            continue  # the collapsed view is an overview; what backward reads is in the full one
        attrs = dict(EDGE_KIND_ATTRS[kind])
        labels = []
        if u in buffers:
            labels.append(f"b{buffers[u]}")
        if count > 1 and kind != "param" and (step_of(d, u) is None or step_of(d, v) is None):
            labels.append(f"×{count}")
        folded = bool(d.step_label) and kind.startswith("recurrent") and u.step == v.step
        if folded:
            # a recurrent edge folded into its template: a loop back into the same cluster
            attrs["constraint"] = "false"
            if (v, u) in pairs:  # drawn straight it lay on, and hid, the edge v -> u (c -> c * f)
                attrs.update(tailport="n", headport="n")
            labels.append("t+1" if kind == "recurrent" else "t−1")
        if labels:
            attrs["label"] = " ".join(labels)
        if kind in ("backward", "recurrent_backward") and not folded:
            out.append((d.ids[v], d.ids[u], dict(attrs, dir="back")))
        else:
            out.append((d.ids[u], d.ids[v], attrs))
    return out


def buffer_ids(compiled: Any) -> dict[Node, Any]:
    """Node -> buffer id from a compiled program's buffer plan, if it exposes one (else {})."""
    if compiled is None:
        return {}
    report = getattr(compiled, "report", None)
    for owner in (
        compiled,
        getattr(compiled, "plan", None),
        report,
        getattr(report, "plan", None),
        getattr(report, "buffer_plan", None),
    ):
        for name in ("buffer_of", "buffers", "assignment"):
            table = getattr(owner, name, None)
            if isinstance(table, dict) and table:
                return _by_node(compiled.graph, table)
    return {}


def _by_node(graph: Any, table: dict) -> dict[Node, Any]:
    nodes = graph.nodes
    out = {}
    for key, value in table.items():
        if isinstance(key, Node):
            out[key] = value
        elif isinstance(key, int) and 0 <= key < len(nodes):
            out[nodes[key]] = value
    return out
