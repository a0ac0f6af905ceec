"""The module-level diagram: one box per (leaf module scope, step, phase), inputs and outputs as
ellipses x_t / y_t, recurrent state edges between a module's boxes at t and t+1.
"""
from __future__ import annotations

import graphviz

from ..graph import Node
from .buses import route_buses
from .ops_view import constraining, new_digraph, order_steps
from .scopes import place_by_scope
from .source import Drawing, output_name
from .style import CLUSTER_ATTRS, EDGE_KIND_ATTRS, role_attrs

Box = tuple  # ("module", scope, step, phase) or ("value", tape position)


def module_name(d: Drawing, scope: str) -> str:
    """Class name for a scope from `graph.meta.scopes` ("nn.LSTM(3 -> 4)" -> "LSTM")."""
    described = d.graph.meta.scopes.get(scope)
    if not described:
        return scope or "inputs"
    name = str(described).split("(")[0].strip()
    return name.removeprefix("nn.")


def draw_modules(d: Drawing, cluster_by: str = "step", title: str | None = None
                 ) -> graphviz.Digraph:
    """Module-level DOT for a Drawing (see `tapernn.export.to_dot`)."""
    num = {n: k for k, n in enumerate(d.graph.nodes)}
    box_of = _assign_boxes(d, num)
    outputs = _output_boxes(d, box_of)
    boxes = list(dict.fromkeys(b for b in box_of.values() if b is not None)) + list(outputs)
    ids = {b: f"m{k}" for k, b in enumerate(boxes)}
    first_node = dict(outputs)
    for n, b in box_of.items():
        first_node.setdefault(b, n)
    edges = _box_edges(d, box_of)
    edges.update({(box_of[n], b): _output_kind(d, n) for b, n in outputs.items()})
    emitted = [(ids[b], ids[a], dict(EDGE_KIND_ATTRS[k], dir="back"))
               if k in ("backward", "recurrent_backward") else (ids[a], ids[b], EDGE_KIND_ATTRS[k])
               for (a, b), k in edges.items()]
    dot = new_digraph(title)
    draw = lambda g, b: g.node(ids[b], **_box_attrs(d, b, first_node[b]))
    if cluster_by == "scope":
        place_by_scope(dot, boxes, _parent_scope, draw, _scope_names(d))
    else:
        steps = {ids[b]: _box_step(b, first_node) for b in boxes}
        emitted, points = route_buses(emitted, steps)
        _place_by_step(dot, d, boxes, first_node, ids, draw, points, emitted)
    for u, v, attrs in emitted:
        dot.edge(u, v, **attrs)
    return dot


def _assign_boxes(d: Drawing, num: dict[Node, int]) -> dict[Node, Box | None]:
    """Box per node. Ops recorded outside any named module (the gradient bookkeeping autodiff
    adds for graph inputs) join the box of the value they read, so no anonymous boxes appear."""
    named = d.graph.meta.scopes
    box_of: dict[Node, Box | None] = {}
    for n in d.nodes:
        box = _box(d, n, num)
        if box is not None and box[0] == "module" and not n.scope and "" not in named:
            box = next((box_of[i] for i in n.inputs
                        if box_of.get(i) is not None and box_of[i][0] == "module"), box)
        box_of[n] = box
    return box_of


def _box(d: Drawing, n: Node, num: dict[Node, int]) -> Box | None:
    role = d.roles[n]
    if role in ("param", "constant"):
        return None  # parameters live inside their module's box; constants are details
    if n.op == "input":
        return ("value", num[n])
    return ("module", n.scope, n.step, n.phase if role != "context" else "context")


def _output_boxes(d: Drawing, box_of: dict[Node, Box | None]) -> dict[Box, Node]:
    """Graph outputs as ellipses, y_t, drawn in the step that computes them. The gradients one
    box produces for many inputs (all of an LSTM's weights) share one ellipse."""
    out: dict[Box, Node] = {}
    grads: dict[Box, list[int]] = {}
    for k, n in enumerate(d.graph.outputs):
        if n in box_of and d.rep[n] is n and box_of[n] is not None and box_of[n][0] == "module":
            if d.roles[n] == "gradient":
                grads.setdefault(box_of[n], []).append(k)
            else:
                out[("output", k)] = n
    for ks in grads.values():
        group = [ks] if len(ks) > 3 else [[k] for k in ks]
        for members in group:
            out[("output", *members)] = d.graph.outputs[members[0]]
    return out


def _outputs_label(d: Drawing, b: Box) -> str:
    names = [output_name(d.graph, d.graph.outputs[k]) for k in b[1:]]
    if len(names) > 12:
        names = names[:11] + [f"… (+{len(names) - 11})"]
    rows = [" ".join(names[r:r + 3]) for r in range(0, len(names), 3)]
    return "\n".join(rows)


def _output_kind(d: Drawing, n: Node) -> str:
    return "backward" if d.roles[n] == "gradient" else "plain"


def _parent_scope(b: Box) -> str:
    return b[1] if b[0] == "module" else ""


def _scope_names(d: Drawing) -> dict[str, str]:
    return {s: module_name(d, s) for s in d.graph.meta.scopes}


def _box_step(b: Box, first: dict[Box, Node]) -> int | None:
    return b[2] if b[0] == "module" else first[b].step


def _place_by_step(dot: graphviz.Digraph, d: Drawing, boxes: list[Box], first: dict[Box, Node],
                   ids: dict[Box, str], draw, points: dict, emitted: list) -> None:
    clusters: dict[int, list[Box]] = {}
    for b in boxes:
        t = _box_step(b, first)
        if t is None:
            draw(dot, b)
        else:
            clusters.setdefault(t, []).append(b)
    members = {t: [ids[b] for b in bs] for t, bs in clusters.items()}
    for t in sorted(clusters):
        with dot.subgraph(name=f"cluster_step_{t}") as c:
            c.attr(label=d.step_label.get(t, f"t = {t}"), **CLUSTER_ATTRS)
            for b in clusters[t]:
                draw(c, b)
    # bus junctions stay outside the clusters: inside, each cluster would span the rank of its
    # neighbour's junction and dot would stack the steps diagonally instead of in one row
    for t in sorted(points):
        for name, attrs in points[t]:
            dot.node(name, **attrs)
    order_steps(dot, members, constraining(emitted))


def _box_attrs(d: Drawing, b: Box, n: Node) -> dict[str, str]:
    if b[0] == "output":
        attrs = role_attrs("seed" if d.roles[n] == "gradient" else "data")
        attrs.update(label=_outputs_label(d, b), style="filled,bold")
        if len(b) > 2:
            attrs["shape"] = "box"  # a block of names reads better in a box than an ellipse
        return attrs
    if b[0] == "value":
        attrs = role_attrs(d.roles[n])
        attrs["label"] = n.name or f"x{b[1]}"
        return attrs
    _, scope, t, phase = b
    name = module_name(d, scope)
    label = f"∂{name}" if phase == "backward" else name
    when = "" if t is None else (d.step_label.get(t) or f"t={t}")
    if t is None and phase == "backward":
        when = "Σ over t"  # weight gradients: one sum of every step's contribution
    attrs = role_attrs({"backward": "backward", "context": "context"}.get(phase, "op"))
    attrs.update(label=f"{label}\n{when}" if when else label, fontsize="12",
                 margin="0.15,0.08")
    return attrs


def _box_edges(d: Drawing, box_of: dict[Node, Box | None]) -> dict[tuple[Box, Box], str]:
    """One edge per pair of boxes that any op edge connects, first kind seen wins."""
    edges: dict[tuple[Box, Box], str] = {}
    for u, v, _pos in d.edges:
        a, b = box_of.get(d.rep[u]), box_of.get(d.rep[v])
        if a is None or b is None or a == b and not _crosses(u, v):
            continue
        if (a, b) in edges:
            continue
        edges[(a, b)] = _kind(d, u, v)
    return edges


def _crosses(u: Node, v: Node) -> bool:
    return u.step is not None and v.step is not None and u.step != v.step


def _kind(d: Drawing, u: Node, v: Node) -> str:
    if v.phase == "backward" and u.phase == "forward":
        return "context"
    if v.phase == "backward":
        return "recurrent_backward" if _crosses(u, v) else "backward"
    return "recurrent" if _crosses(u, v) else "plain"
