"""The module-level diagram: one box per (leaf module scope, step, phase), inputs and outputs as
ellipses x_t / y_t, recurrent state edges between a module's boxes at t and t+1.
"""

from __future__ import annotations

import graphviz

from ..graph import Node
from ..nn.row_select import says_masked
from .buses import route_buses
from .ops_view import constraining, new_digraph, order_steps
from .scopes import place_by_scope
from .source import Drawing, output_name
from .style import CLUSTER_ATTRS, EDGE_KIND_ATTRS, escaped, role_attrs

Box = tuple  # ("module", scope, step, phase) or ("value", tape position)


def module_name(d: Drawing, scope: str) -> str:
    """Class name for a scope from `graph.meta["scopes"]` ("nn.LSTM(3 -> 4)" -> "LSTM"); modules
    of one class that appear several times (stacked LSTMs) are told apart: "LSTM layer 1"; a
    module masking zero rows says so: "FastLSTM (mask_zero)" (nn/row_select.masked_name)."""
    scopes = d.graph.meta.scopes
    if not scopes.get(scope):
        return scope or "inputs"
    name = _class_name(scopes[scope])
    drawn = _containers(d) | _inside_units(d)
    same = [
        s for s, described in scopes.items() if _class_name(described) == name and s not in drawn
    ]
    inner = [s for s in scopes if s.startswith(scope + ".") and "." not in s[len(scope) + 1 :]]
    head = str(scopes[scope]).split(" @ ")[0]  # (a decorator describes its module after " @ ")
    if scope in d.graph.meta.units and len(inner) == 1 and "(" not in head:
        name = f"{name} @ {_class_name(scopes[inner[0]])}"  # a decorator: MaskZero @ GRU
    masked = says_masked(head)
    tag = " (mask_zero)" if masked else ""
    if len(same) > 1 and scope in same:
        last = scope.rsplit(".", 1)[-1]  # a named child (BiSequencer's fwd / bwd) by its name
        if last.isdigit():
            return f"{name} layer {same.index(scope)}{tag}"
        return f"{name} ({last}{', mask_zero' if masked else ''})"
    if " @ " in name or masked:
        return name + tag
    described = str(scopes[scope]).removeprefix("nn.")
    # arguments that change what a module does stay: SelectTable(-1), Dropout(0.5)
    return (
        described
        if "(" in described
        and "->" not in described
        and " @ " not in described
        and len(described) <= 24
        else name
    )


def _class_name(described: object) -> str:
    return str(described).split("(")[0].strip().split(" @ ")[0].removeprefix("nn.")


def _containers(d: Drawing) -> set[str]:
    """Scopes with child scopes: their own ops (a Sequencer's x[t] and stacking) are plumbing;
    not the units (graph.meta.units: a recurrent module or MaskZero is one box per step)."""
    scopes, units = d.graph.meta.scopes, set(d.graph.meta.units)
    return {
        s
        for s in scopes
        if s not in units and any(o != s and (s == "" or o.startswith(s + ".")) for o in scopes)
    }


def _inside_units(d: Drawing) -> set[str]:
    return {s for s in d.graph.meta.scopes if _unit(d, s) != s}


def _unit(d: Drawing, scope: str) -> str:
    """The box scope of an op recorded in `scope`: the outermost unit holding it, else itself."""
    for u in sorted(d.graph.meta.units, key=len):
        if u == scope or u == "" or scope.startswith(u + "."):
            return u
    return scope


def draw_modules(
    d: Drawing, cluster_by: str = "step", title: str | None = None
) -> graphviz.Digraph:
    """Module-level DOT for a Drawing (see `tapernn.export.to_dot`)."""
    num = {n: k for k, n in enumerate(d.graph.nodes)}
    box_of = _assign_boxes(d, num)
    feeds = _sources(d, box_of)
    outputs = _output_boxes(d, box_of, feeds)
    edges = _box_edges(d, box_of, feeds)
    for b, n in outputs.items():
        for s in feeds.get(n, ()):
            edges.setdefault((box_of[d.rep[s]], b), _output_kind(d, n))
    aliases = _route_aliases(d, box_of, edges)
    boxes = (
        list(dict.fromkeys(b for b in box_of.values() if b is not None)) + aliases + list(outputs)
    )
    ids = {b: f"m{k}" for k, b in enumerate(boxes)}
    first_node = dict(outputs)
    for n, b in box_of.items():
        if b is not None:
            first_node.setdefault(b, n)
    emitted = [
        (ids[b], ids[a], dict(_edge_attrs(k, a == b), dir="back"))
        if k in ("backward", "recurrent_backward")
        else (ids[a], ids[b], _edge_attrs(k, a == b))
        for (a, b), k in edges.items()
    ]
    dot = new_digraph(title)
    dot.attr(newrank="true")  # rank all at once: step clusters stay in order, left to right
    stepped = _stepped_scopes(d)
    draw = lambda g, b: g.node(ids[b], **escaped(_box_attrs(d, b, first_node.get(b), stepped)))
    if cluster_by == "scope":
        place_by_scope(dot, boxes, _parent_scope, draw, _scope_names(d))
    else:
        steps = {ids[b]: _box_step(b, first_node) for b in boxes}
        emitted, points = route_buses(emitted, steps)
        _place_by_step(dot, d, boxes, first_node, ids, draw, points, emitted)
    for u, v, attrs in emitted:
        dot.edge(u, v, **attrs)
    return dot


def _edge_attrs(kind: str, loop: bool = False) -> dict[str, str]:
    """Module level: recurrent edges pull hard, so each module's boxes form one straight row; in
    a collapsed template they loop back into their box, labelled t+1 (t−1 backward)."""
    attrs = dict(EDGE_KIND_ATTRS[kind])
    if kind.startswith("recurrent"):
        attrs["weight"] = "100"
        if loop:
            attrs["label"] = "t+1" if kind == "recurrent" else "t−1"
    return attrs


def _assign_boxes(d: Drawing, num: dict[Node, int]) -> dict[Node, Box | None]:
    """Box per node (None: not a box of its own). Ops recorded outside any named module (the
    gradient bookkeeping autodiff adds for graph inputs) join the box of the value they read, so
    no anonymous boxes appear; a container's own ops (a Sequencer's x[t]) are plumbing, drawn as
    the edges they carry."""
    named = d.graph.meta.scopes
    containers = _containers(d)
    box_of: dict[Node, Box | None] = {}
    for n in d.nodes:
        box = _box(d, n, num)
        if box is not None and box[0] == "module" and box[1] in containers:
            box = None
        elif box is not None and box[0] == "module" and not n.scope and "" not in named:
            box = next(
                (
                    box_of[i]
                    for i in n.inputs
                    if box_of.get(i) is not None and box_of[i][0] == "module"
                ),
                box,
            )
        box_of[n] = box
    return box_of


def _sources(d: Drawing, box_of: dict[Node, Box | None]) -> dict[Node, tuple[Node, ...]]:
    """Per node, the boxed nodes its value comes from: itself, or through plumbing the boxed
    nodes the plumbing reads (x -> x[t] -> LSTM draws x -> LSTM)."""
    feeds: dict[Node, tuple[Node, ...]] = {}
    for n in d.graph.nodes:
        if n not in d.rep:
            continue
        if box_of.get(d.rep[n]) is not None:
            feeds[n] = (n,)
        elif d.roles[d.rep[n]] not in ("param", "constant"):
            feeds[n] = tuple(dict.fromkeys(s for i in n.inputs for s in feeds.get(i, ())))
    return feeds


def _route_aliases(
    d: Drawing, box_of: dict[Node, Box | None], edges: dict[tuple[Box, Box], str]
) -> list[Box]:
    """Boxes for modules that record no op (SelectTable(-1) hands on the last step's Var): the
    edges from the value it picks to what reads it afterwards go through its box, and the
    matching backward edge through its ∂ box."""
    made: list[Box] = []
    for alias in d.graph.meta.aliases:
        picked = [n for n in d.graph.nodes if n.id in set(alias["outputs"]) and n in d.rep]
        box = ("module", alias["scope"], alias["step"], "forward")
        for n in picked:
            a = box_of.get(d.rep[n])
            readers = {
                box_of.get(d.rep[v])
                for v in d.graph.nodes
                if v.id > alias["after"] and n in v.inputs and v in d.rep and v.phase == "forward"
            }
            for b in readers - {None, a}:
                if a is None or edges.pop((a, b), None) is None:
                    continue
                edges[(a, box)], edges[(box, b)] = "plain", "plain"
                made.append(box)
                back = _phase(b, "backward"), _phase(a, "backward")
                if edges.pop(back, None) is not None:
                    grad = _phase(box, "backward")
                    edges[(back[0], grad)], edges[(grad, back[1])] = "backward", "backward"
                    made.append(grad)
    return list(dict.fromkeys(made))


def _phase(b: Box, phase: str) -> Box:
    return (*b[:3], phase) if b[0] == "module" else b


def _box(d: Drawing, n: Node, num: dict[Node, int]) -> Box | None:
    role = d.roles[n]
    if role in ("param", "constant"):
        return None  # parameters live inside their module's box; constants are details
    if n.op == "input":
        return ("value", num[n])
    return ("module", _unit(d, n.scope), n.step, n.phase if role != "context" else "context")


def _output_boxes(
    d: Drawing, box_of: dict[Node, Box | None], feeds: dict[Node, tuple[Node, ...]]
) -> dict[Box, Node]:
    """Graph outputs as ellipses, y_t, drawn in the step that computes them. The gradients one
    box produces for many parameters (all of an LSTM's weights) share one box."""
    out: dict[Box, Node] = {}
    grads: dict[Box, list[int]] = {}
    for k, n in enumerate(d.graph.outputs):
        if n not in box_of or d.rep[n] is not n:
            continue
        box = box_of[n]
        if box is None and not feeds.get(n) or box is not None and box[0] != "module":
            continue
        if not output_name(d.graph, n) or d.graph.outputs.index(n) != k:
            continue  # a compiled program's unnamed outputs: values kept or saved for backward
        if d.roles[n] == "gradient" and box is not None:
            grads.setdefault(box, []).append(k)
        else:
            out[("output", k)] = n
    for ks in grads.values():
        group = [ks] if len(ks) > 3 else [[k] for k in ks]
        for members in group:
            out[("output", *members)] = d.graph.outputs[members[0]]
    return out


def _outputs_label(d: Drawing, b: Box) -> str:
    names = [output_name(d.graph, d.graph.outputs[k]) for k in b[1:]]
    if len(names) == 1:
        return names[0]
    n = d.graph.outputs[b[1]]
    owner = module_name(d, _unit(d, n.scope)) if n.scope else "the model"
    return f"∂ parameters ×{len(names)}\n{owner}"


def _output_kind(d: Drawing, n: Node) -> str:
    return "backward" if d.roles[n] == "gradient" else "plain"


def _parent_scope(b: Box) -> str:
    return b[1] if b[0] == "module" else ""


def _scope_names(d: Drawing) -> dict[str, str]:
    return {s: module_name(d, s) for s in d.graph.meta.scopes}


def _box_step(b: Box, first: dict[Box, Node]) -> int | None:
    return b[2] if b[0] == "module" else first[b].step


def _place_by_step(
    dot: graphviz.Digraph,
    d: Drawing,
    boxes: list[Box],
    first: dict[Box, Node],
    ids: dict[Box, str],
    draw,
    points: dict,
    emitted: list,
) -> None:
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


def _box_attrs(d: Drawing, b: Box, n: Node | None, stepped: set[str]) -> dict[str, str]:
    if b[0] == "output":
        attrs = role_attrs("seed" if d.roles[n] == "gradient" else "data")
        attrs.update(label=_outputs_label(d, b), style="filled,bold")
        if len(b) > 2:  # one box for a module's many parameter gradients, names on hover
            attrs.update(
                shape="box",
                tooltip=" ".join(output_name(d.graph, d.graph.outputs[k]) for k in b[1:]),
            )
        return attrs
    if b[0] == "value":
        attrs = role_attrs(d.roles[n])
        attrs["label"] = n.name or f"x{b[1]}"
        return attrs
    _, scope, t, phase = b
    name = module_name(d, scope)
    label = f"∂{name}" if phase == "backward" else name
    caption = d.step_label.get(t, "") if t is not None else ""
    when = "" if t is None else ("t" if "×" in caption else f"t={t}")
    if t is None and scope in stepped:
        # weight gradients sum every step's contribution; a compiled program hoists work
        # out of the steps (one matmul for all of them)
        when = "Σ over t" if phase == "backward" else "all steps"
    attrs = role_attrs({"backward": "backward", "context": "context"}.get(phase, "op"))
    attrs.update(label=f"{label}\n{when}" if when else label, fontsize="12", margin="0.15,0.08")
    if t is not None:  # with the heavy recurrent edges: one straight row per module
        attrs["group"] = f"{scope}:{phase}"
    return attrs


def _stepped_scopes(d: Drawing) -> set[str]:
    """Scopes that run once per step (their parameter gradients sum over t)."""
    return {n.scope for n in d.graph.nodes if n.step is not None and n.phase == "forward"}


def _box_edges(
    d: Drawing, box_of: dict[Node, Box | None], feeds: dict[Node, tuple[Node, ...]]
) -> dict[tuple[Box, Box], str]:
    """One edge per pair of boxes that any op edge connects (through plumbing), first kind seen
    wins."""
    edges: dict[tuple[Box, Box], str] = {}
    for u, v, _pos in d.edges:
        b = box_of.get(d.rep[v])
        if b is None:
            continue
        for s in feeds.get(u, ()):
            a = box_of.get(d.rep[s])
            if a is None or a == b and not _crosses(s, v) or (a, b) in edges:
                continue
            edges[(a, b)] = _kind(d, s, v)
    return edges


def _crosses(u: Node, v: Node) -> bool:
    return u.step is not None and v.step is not None and u.step != v.step


def _kind(d: Drawing, u: Node, v: Node) -> str:
    if v.phase == "backward" and u.phase == "forward":
        return "context"
    if v.phase == "backward":
        return "recurrent_backward" if _crosses(u, v) else "backward"
    return "recurrent" if _crosses(u, v) else "plain"
