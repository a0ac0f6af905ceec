"""Drawing compiled programs: a module's forward and backward programs (each, or both joined where
the backward reads what the forward saved), and the secondary label line of a compiled node
(its output name, "saved for backward", its buffer).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..graph import Graph, Node
from .source import Drawing, classify, is_scalar_constant


def training_pair(obj: Any) -> Any:
    """The compiled forward/backward pair of a module after a training forward, else None."""
    runtime = getattr(obj, "_runtime", None)
    last = runtime.display_executable() if runtime is not None else None
    return getattr(last, "training_pair", None)


def pair_drawing(pair: Any, view: str) -> Drawing:
    """The forward program, the backward program, or both: the backward's saved-value and
    argument inputs are drawn as the forward nodes they receive."""
    fwd, bwd = pair.forward.graph, pair.backward.graph
    programs = {
        "forward": [pair.forward],
        "backward": [pair.backward],
        "both": [pair.forward, pair.backward],
    }[view]
    stand_in: dict[Node, Node] = {}
    if view == "both":
        saved = [fwd.outputs[k] for k in fwd.meta.saved_outputs or ()]
        stand_in.update(zip(bwd.inputs[: pair.n_saved], saved))
        args = bwd.inputs[pair.n_saved + pair.n_seeds :]
        stand_in.update((a, fwd.inputs[k]) for a, k in zip(args, pair.reads))
        stand_in = {a: b for a, b in stand_in.items() if a is not b}
    nodes = list(dict.fromkeys(n for c in programs for n in c.graph.nodes if n not in stand_in))
    keep = set(nodes)
    if view == "backward":  # what the backward reads from outside, as context
        keep = {n for n in nodes if n.phase == "backward"}
        keep |= {i for n in list(keep) for i in n.inputs}
        nodes = [n for n in nodes if n in keep]
    nodes = [n for n in nodes if not is_scalar_constant(n)]
    drawn = set(nodes)
    edges = [
        (stand_in.get(i, i), n, pos)
        for n in nodes
        for pos, i in enumerate(n.inputs)
        if stand_in.get(i, i) in drawn
    ]
    if view == "backward":
        edges = [e for e in edges if e[1].phase == "backward"]
    names = _names(programs)
    graph = Graph(
        nodes,
        [n for n in nodes if n.op == "input"],
        [o for c in programs for o in c.graph.outputs],
        fwd.meta,
    )
    graph.meta = replace(
        graph.meta,
        output_names=tuple(_first_names(graph.outputs, names)),
        n_forward_outputs=len(pair.forward.graph.outputs) if view != "backward" else 0,
    )
    roles = classify(graph, nodes, view)
    for n in nodes:
        if roles[n] == "output" and not names.get(n):
            roles[n] = "op"  # a value kept for the module's fields (inputs[t], final state)
    for c in programs:
        for o in _saved(c.graph):
            if o in roles:
                roles[o] = "context" if view == "backward" else "op"
    ids = {n: f"n{k}" for k, n in enumerate(nodes)}
    return Drawing(
        graph,
        view,
        nodes,
        ids,
        roles,
        edges,
        {n: n for n in nodes},
        {},
        programs[0],
        programs=programs,
    )


def _first_names(outputs: list[Node], names: dict[Node, str]) -> list[str]:
    """Each named node's name at its first position among the outputs, "" elsewhere."""
    seen: set[Node] = set()
    out = []
    for o in outputs:
        out.append("" if o in seen else names.get(o, ""))
        seen.add(o)
    return out


def _names(programs: list) -> dict[Node, str]:
    out: dict[Node, str] = {}
    for c in programs:
        names = c.graph.meta.output_names
        for k, o in enumerate(c.graph.outputs[: len(names)]):
            out.setdefault(o, str(names[k]))
    return out


def _saved(graph: Graph) -> set[Node]:
    return {graph.outputs[k] for k in graph.meta.saved_outputs or ()}


def detail_line(d: Drawing, n: Node) -> str:
    """Under a compiled node: what else it is ("saved for backward", "returned" for a value the
    module keeps in its fields) and where it lives: b3 (preallocated buffer 3), "in out0" (in
    its slot of a concatenated output), "view of b0", "in place", "new array"."""
    parts = []
    names, per_program = _context(d)
    for k, (c, saved, outputs) in enumerate(per_program):
        if n in saved:
            parts.append("saved for backward")
        elif n in outputs and n not in names and n.phase == "forward" and n.op != "input":
            parts.append("returned")
        plan = getattr(getattr(c, "program", None), "plan", None)
        if plan is not None and n in plan.storage and n.op not in ("input", "constant"):
            where = _where(plan, n, names)
            if where and len(per_program) > 1:
                where = f"{'backward' if k == len(per_program) - 1 else 'forward'} {where}"
            parts.append(where)
    return " · ".join(dict.fromkeys(p for p in parts if p))


def _context(d: Drawing) -> tuple[dict[Node, str], list[tuple[Any, set, set]]]:
    """(output name per node, [(program, its saved values, its outputs)]), built once."""
    cached = getattr(d, "_detail_context", None)
    if cached is None:
        names: dict[Node, str] = {}
        listed = d.graph.meta.output_names
        for k, o in enumerate(d.graph.outputs[: len(listed)]):
            if listed[k]:
                names.setdefault(o, str(listed[k]))
        cached = names, [(c, _saved(c.graph), set(c.graph.outputs)) for c in d.programs]
        d._detail_context = cached  # type: ignore[attr-defined]
    return cached


def _where(plan: Any, n: Node, names: dict[Node, str]) -> str:
    home = plan.storage.get(n, n)
    if n in plan.buffer_of:
        return f"b{plan.buffer_of[n]}"
    if n in plan.inplace:
        return "in place"
    if n in plan.placed:
        return f"in {names.get(home) or 'its slot of a concat'}"
    if home is not n:
        return f"view of b{plan.buffer_of[home]}" if home in plan.buffer_of else "view"
    return "new array" if n in plan.fresh else ""
