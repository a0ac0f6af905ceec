"""What a diagram shows: resolving the object to draw, picking the nodes of a view, classifying
them (param, data, seed, gradient, ...) and, for `collapse=True`, folding isomorphic steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError, ArgumentTypeError, StateError
from ..graph import Graph, Node

VIEWS = ("forward", "backward", "both")


@dataclass
class Drawing:
    """The nodes and edges one diagram draws, in tape order, with their roles.

    `rep` maps every drawn-or-folded node to the node that stands for it (itself unless
    collapsed); `step_label[t]` is the cluster caption of step `t`'s stand-in cluster.
    """

    graph: Graph
    view: str
    nodes: list[Node]
    ids: dict[Node, str]
    roles: dict[Node, str]
    edges: list[tuple[Node, Node, int]]
    rep: dict[Node, Node] = field(default_factory=dict)
    step_label: dict[int, str] = field(default_factory=dict)
    compiled: Any = None
    initial: set[Node] = field(default_factory=set)  # collapsed: a template's initial values
    programs: list = field(default_factory=list)  # the Compiled programs drawn, if any


def resolve(obj: Any, compiled: bool = False) -> tuple[Graph, Any]:
    """(graph to draw, Compiled or None) for a Graph, a Compiled or an object with `.graph`."""
    from ..executor import Compiled

    if isinstance(obj, Graph):
        if compiled:
            raise ArgumentError(
                "compiled=True needs a Compiled object or a module after forward, "
                "not a bare Graph; use tn.compile(graph) first"
            )
        return obj, None
    if isinstance(obj, Compiled) or _looks_compiled(obj):
        return obj.graph, obj
    if compiled and getattr(obj, "compiled", None) is not None:
        runtime = getattr(obj, "_runtime", None)  # a rolled program is drawn unrolled
        last = runtime.display_executable() if runtime is not None else None
        if last is not None and last is not runtime.last:
            return resolve(
                last.training_pair.forward if last.training_pair is not None else last.forward_only
            )
        return resolve(obj.compiled)
    graph = getattr(obj, "graph", None)
    if isinstance(graph, Graph):
        return graph, None
    if graph is None and hasattr(obj, "compile_report"):
        name = obj.describe() if hasattr(obj, "describe") else type(obj).__name__
        raise StateError(
            f"cannot draw {name}: nothing traced yet; call forward first "
            f"(set_passes clears the traced programs)"
        )
    raise ArgumentTypeError(
        f"cannot draw {type(obj).__name__}: expected a Graph, a Compiled program "
        f"or a module after forward (an object with a .graph)"
    )


def _looks_compiled(obj: Any) -> bool:
    return isinstance(getattr(obj, "graph", None), Graph) and hasattr(obj, "report")


def select(graph: Graph, view: str, compiled: Any = None) -> Drawing:
    """The nodes and edges of `view`: forward, backward (plus the forward values it reads) or both."""
    if view not in VIEWS:
        raise ArgumentError(f"view must be one of {VIEWS}, got {view!r}")
    num = graph.numbering()
    if view == "both":
        keep = set(graph.nodes)
    elif view == "forward":
        keep = {n for n in graph.nodes if n.phase == "forward"}
    else:
        keep = {n for n in graph.nodes if n.phase == "backward"}
        keep |= {i for n in list(keep) for i in n.inputs}
    keep -= {n for n in keep if is_scalar_constant(n)}  # shown inside their readers' labels
    nodes = [n for n in graph.nodes if n in keep]
    edges = [(i, n, pos) for n in nodes for pos, i in enumerate(n.inputs) if i in keep]
    if view == "backward":
        # forward values are context here: show what backward reads, not how they were made
        edges = [(i, n, pos) for i, n, pos in edges if n.phase == "backward"]
    roles = classify(graph, nodes, view)
    ids = {n: f"n{num[n]}" for n in nodes}
    return Drawing(
        graph,
        view,
        nodes,
        ids,
        roles,
        edges,
        {n: n for n in nodes},
        {},
        compiled,
        programs=[compiled] if compiled is not None else [],
    )


def is_scalar_constant(n: Node) -> bool:
    return n.op == "constant" and n.value is not None and n.value.size == 1


def classify(graph: Graph, nodes: list[Node], view: str) -> dict[Node, str]:
    """Role per node: param, data, state, seed, constant, output, gradient, op, backward, context."""
    n_fwd = graph.meta.n_forward_outputs
    n_fwd = len(graph.outputs) if n_fwd is None else n_fwd
    outputs = {n: k for k, n in enumerate(graph.outputs)}
    roles = {}
    for n in nodes:
        if n.op == "input":
            kind = n.kind or "data"
            roles[n] = {"random": "data", "saved": "state"}.get(kind, kind)
        elif n.op == "constant":
            roles[n] = "constant"
        elif n in outputs and (outputs[n] >= n_fwd or n.phase == "backward"):
            roles[n] = "gradient"
        elif n in outputs:
            roles[n] = "output"
        elif n.phase == "backward":
            roles[n] = "backward"
        else:
            roles[n] = "op"
        if view == "backward" and n.phase == "forward" and roles[n] != "param":
            roles[n] = "context"
    return roles


def output_name(graph: Graph, node: Node) -> str:
    names = graph.meta.output_names
    k = graph.outputs.index(node)
    if k < len(names):
        return str(names[k])
    return f"y_{node.step}" if node.step is not None else f"y{k}"


# ---- collapse: one cluster per class of isomorphic steps ----------------------------------------


def collapse_steps(d: Drawing) -> Drawing:
    """Fold steps whose sub-graphs match into their first step (positional isomorphism).

    Steps are compared node by node: op, shape, phase and where each input comes from (same
    step, an earlier/later step by position, or a shared node outside the steps). A step that
    reads an initial value (a shared input such as h0, or a source op such as `zeros`) where
    the other reads the previous step is the same step: the first step of a recurrence folds
    into the template, and its initial values feed the template from outside. Each class is
    drawn once, captioned "t = a … b  ×k"; a recurrence of T >= 2 steps is one cluster.
    """
    by_step: dict[int, list[Node]] = {}
    for n in d.nodes:
        if n.step is not None and d.roles[n] != "param" and not _is_source(n):
            by_step.setdefault(n.step, []).append(n)
    index = {n: k for members in by_step.values() for k, n in enumerate(members)}
    sigs = {t: _signature(ms, t, index, d.roles) for t, ms in by_step.items()}
    classes: list[list[int]] = []
    for t in sorted(by_step):
        home = next((c for c in classes if _compatible(sigs[c[0]], sigs[t])), None)
        if home is None:
            classes.append([t])
        else:
            home.append(t)
    rep: dict[Node, Node] = {n: n for n in d.nodes}
    labels = {}
    for steps in classes:
        first = steps[0]
        labels[first] = _steps_caption(steps)
        for t in steps[1:]:
            for n, template in zip(by_step[t], by_step[first]):
                rep[n] = template
    nodes = [n for n in d.nodes if rep[n] is n]
    folded = {t for steps in classes if len(steps) > 1 for t in steps}
    initial = {n for n in nodes if n.step in folded and _is_source(n)}
    return Drawing(
        d.graph,
        d.view,
        nodes,
        d.ids,
        d.roles,
        d.edges,
        rep,
        labels,
        d.compiled,
        initial,
        d.programs,
    )


def _is_source(n: Node) -> bool:
    """An op that reads nothing (`zeros` of an initial state): drawn, never part of a template."""
    return not n.inputs and n.op not in ("input", "constant")


def _signature(
    members: list[Node], t: int, index: dict[Node, int], roles: dict[Node, str]
) -> list[tuple]:
    sig = []
    for n in members:
        srcs = []
        for i in n.inputs:
            if is_scalar_constant(i):
                srcs.append(("constant", i.value.item()))
            elif i in index and i.step is not None:
                srcs.append((i.step - t, index[i]))
            elif roles.get(i) == "param":
                srcs.append(("shared", i.id))
            else:
                srcs.append(("initial",))  # a shared node, a source op, an initial state
        sig.append((n.op, n.shape, n.phase, n.attrs.get("kind"), tuple(srcs)))
    return sig


def _compatible(a: list[tuple], b: list[tuple]) -> bool:
    """Same nodes in the same order, inputs alike up to "initial value" vs "another step's"."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x[:4] != y[:4] or len(x[4]) != len(y[4]):
            return False
        for p, q in zip(x[4], y[4]):
            if p != q and not _initial_vs_recurrent(p, q) and not _initial_vs_recurrent(q, p):
                return False
    return True


def _initial_vs_recurrent(p: tuple, q: tuple) -> bool:
    return p == ("initial",) and isinstance(q[0], int) and q[0] != 0


def _steps_caption(steps: list[int]) -> str:
    if len(steps) == 1:
        return f"t = {steps[0]}"
    if steps == list(range(steps[0], steps[-1] + 1)):
        span = f"{steps[0]} … {steps[-1]}"
    else:
        span = ", ".join(map(str, steps[:3])) + (", …" if len(steps) > 3 else "")
    return f"t = {span}   ×{len(steps)}"
