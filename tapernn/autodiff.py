"""Reverse mode: `grad` sweeps the tape backwards and appends each node's VJP as ordinary nodes.

Appended nodes keep the step and scope of the node they differentiate and have phase "backward",
so every later stage (passes, buffer planning, diagrams) sees BPTT as plain graph structure.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import functional as F
from .errors import GraphError
from .graph import Graph, Node
from .ops.registry import get_op
from .tracing import Tape, Var, phase, scope, step


def _resolve(graph: Graph, wrt: Sequence[Node | int | str] | None) -> list[Node]:
    if wrt is None:
        return [n for n in graph.inputs if n.dtype.kind == "f" and n.kind not in ("seed", "random")]
    out = []
    for w in wrt:
        if isinstance(w, Node):
            node = w
        elif isinstance(w, (int, np.integer)):
            node = graph.inputs[int(w)]
        elif isinstance(w, str):
            node = graph.input_named(w)
        else:
            raise TypeError(f"wrt entries are input nodes, indices or names, got {w!r}")
        if node not in graph.inputs:
            raise GraphError(f"can only differentiate with respect to graph inputs, not {node!r}")
        out.append(node)
    return out


def _differentiable(n: Node) -> bool:
    return n.dtype.kind == "f" and (n.op in ("input", "constant") or get_op(n.op).differentiable)


def _needs_gradient(graph: Graph, wrt: list[Node]) -> set[Node]:
    """Nodes on some path from a `wrt` input to an output: only these get cotangents."""
    forward = set(wrt)
    for n in graph.nodes:
        if n not in forward and _differentiable(n) and any(i in forward for i in n.inputs):
            forward.add(n)
    backward = set(graph.outputs)
    for n in reversed(graph.nodes):
        if n in backward:
            backward.update(n.inputs)
    return forward & backward


def grad(graph: Graph, wrt: Sequence[Node | int | str] | None = None,
         seeds: str = "auto") -> Graph:
    """Append reverse-mode gradient nodes to (a copy of) `graph`.

    Returns a graph whose outputs are the original outputs followed by d(outputs)/d(w) for each
    `w` in `wrt` (default: every floating-point input). With one scalar output the seed is 1;
    otherwise (or with `seeds="inputs"`) each float output gets a seed input (kind "seed", named
    `grad_<output>`), so the result computes vector-Jacobian products.
    """
    wrt_nodes = _resolve(graph, wrt)
    outs = list(graph.outputs)
    names = graph.meta.get("output_names") or [f"out{k}" for k in range(len(outs))]
    scalar_seed = seeds == "auto" and len(outs) == 1 and outs[0].shape == ()
    needs = _needs_gradient(graph, wrt_nodes)
    tape = Tape(graph.copy())
    cot: dict[Node, list[Var]] = {}
    with tape.recording(), phase("backward"):
        seed_nodes = []
        for k, out in enumerate(outs):
            if out.dtype.kind != "f":
                continue
            with step(out.step), scope(out.scope, absolute=True):
                seed = (tape.constant(1.0, out.dtype) if scalar_seed
                        else tape.input(out.shape, out.dtype, name=f"grad_{names[k]}", kind="seed"))
            seed_nodes.append(seed.node)
            if out in needs:
                cot.setdefault(out, []).append(seed)
        for n in reversed(graph.nodes):
            if n not in cot or n.op in ("input", "constant"):
                continue
            with step(n.step), scope(n.scope, absolute=True):
                _backprop_node(n, F.add_n(cot.pop(n)), needs, tape, cot)
        grads = []
        for w in wrt_nodes:
            with step(w.step), scope(w.scope, absolute=True):
                grads.append(F.add_n(cot[w]) if w in cot else F.zeros(w.shape, w.dtype))
    result = tape.graph
    result.outputs = outs + [g.node for g in grads]
    result.meta.update(
        n_forward_outputs=len(outs),
        output_names=list(names) + [f"grad_{w.name}" for w in wrt_nodes],
        wrt=[w.name for w in wrt_nodes],
        seeds=[s.name for s in seed_nodes if s.op == "input"],
        single_output=False,
    )
    return result


def _backprop_node(n: Node, g: Var, needs: set[Node], tape: Tape, cot: dict[Node, list[Var]]) -> None:
    wants = tuple(i in needs for i in n.inputs)
    if not any(wants):
        return
    op = get_op(n.op)
    grads = op.vjp(g, Var(n, tape), *[Var(i, tape) for i in n.inputs], wants=wants, **n.attrs)
    for i, gi, w in zip(n.inputs, grads, wants):
        if not w or gi is None:
            continue
        if gi.shape != i.shape:
            raise GraphError(f"VJP of {n.op} produced a gradient of shape {gi.shape} for an input "
                             f"of shape {i.shape}")
        cot.setdefault(i, []).append(F.cast(gi, i.dtype))


def split_forward_backward(joint: Graph, n_forward_outputs: int, extra_outputs: Sequence[Node] = ()
                           ) -> tuple[Graph, Graph]:
    """Partition the result of `grad` into a forward program and a backward program.

    forward: the nodes the forward outputs (and `extra_outputs`) need; its outputs are those,
    then the values backward reads ("saved for backward"). backward: every other node the
    gradients need; its inputs are the saved values (kind "saved"), then all of `joint.inputs`
    (so a caller passes the forward's arguments and the seeds again). Outputs: the gradients.
    """
    fwd_outs = list(joint.outputs[:n_forward_outputs]) + list(extra_outputs)
    grad_outs = list(joint.outputs[n_forward_outputs:])
    forward = _ancestors(fwd_outs)
    seeds = {n for n in joint.inputs if n.kind == "seed"}
    in_forward = [n for n in joint.nodes
                  if (n in forward or n.op == "input") and n not in seeds]
    backward_needed = _ancestors(grad_outs)
    bwd_nodes = [n for n in joint.nodes if n in backward_needed and n not in forward
                 and n.op != "input"]
    saved, constants = [], []
    for n in bwd_nodes:
        for i in n.inputs:
            if i in forward and i.op == "constant" and i not in constants:
                constants.append(i)  # constants are cheap: both programs hold them
            elif i in forward and i.op != "input" and i not in saved:
                saved.append(i)
    for g in grad_outs:
        if g in forward and g.op == "constant" and g not in constants:
            constants.append(g)
        elif g in forward and g.op != "input" and g not in saved:
            saved.append(g)
    fwd = Graph(in_forward, [n for n in joint.inputs if n not in seeds], fwd_outs + saved,
                dict(joint.meta, n_saved=len(saved), single_output=False))
    mapping: dict[Node, Node] = {}
    saved_inputs = []
    for k, n in enumerate(saved):
        new = Node("input", (), {"kind": "saved"}, n.shape, n.dtype, step=n.step, scope=n.scope,
                   phase=n.phase, name=f"saved{k}")
        mapping[n] = new
        saved_inputs.append(new)
    nodes = list(saved_inputs) + list(joint.inputs) + constants
    for n in bwd_nodes:
        ins = tuple(mapping.get(i, i) for i in n.inputs)
        mapping[n] = n if ins == n.inputs else n.replace(inputs=ins)
        nodes.append(mapping[n])
    bwd = Graph(nodes, saved_inputs + list(joint.inputs), [mapping.get(g, g) for g in grad_outs],
                dict(joint.meta, single_output=False))
    return fwd, bwd


def _ancestors(outputs: Sequence[Node]) -> set[Node]:
    seen: set[Node] = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.inputs)
    return seen
