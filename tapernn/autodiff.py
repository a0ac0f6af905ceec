"""Reverse mode: `grad` sweeps the tape backwards and appends each node's VJP as ordinary nodes.

Appended nodes keep the step and scope of the node they differentiate and have phase "backward",
so every later stage (passes, buffer planning, diagrams) sees BPTT as plain graph structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from . import functional as F
from .errors import ArgumentError, ArgumentTypeError, DTypeError, GraphError
from .graph import Graph, Node
from .ops.registry import get_op
from .tracing import Tape, Var, phase, scope, step


def _resolve(graph: Graph, wrt: Sequence[Node | int | str] | None) -> list[Node]:
    if wrt is None:
        return [n for n in graph.inputs if n.dtype.kind == "f" and n.kind not in ("seed", "random")]
    out = []
    if isinstance(wrt, (Node, int, np.integer, str)):  # one entry
        wrt = [wrt]
    if not isinstance(wrt, (list, tuple)):
        raise ArgumentTypeError(f"wrt is a list of input nodes, indices or names, got {wrt!r}")
    for w in wrt:
        if isinstance(w, Node):
            node = w
        elif isinstance(w, (int, np.integer)):
            if not -len(graph.inputs) <= w < len(graph.inputs):
                raise ArgumentError(
                    f"wrt index {w} is out of range for a graph of {len(graph.inputs)} inputs"
                )
            node = graph.inputs[int(w)]
        elif isinstance(w, str):
            try:
                node = graph.input_named(w)
            except KeyError as e:
                raise ArgumentError(e.args[0]) from None
        else:
            raise ArgumentTypeError(f"wrt entries are input nodes, indices or names, got {w!r}")
        if node not in graph.inputs:
            raise GraphError(f"can only differentiate with respect to graph inputs, not {node!r}")
        if node.dtype.kind != "f":  # (its "gradient" was an integer array of zeros)
            raise DTypeError(
                f"wrt input {node.name!r} is {node.dtype}: gradients are taken with respect to "
                f"floating-point inputs; trace with {node.name}.astype(np.float64) to "
                f"differentiate a function of its values (wrt=None skips integer inputs)"
            )
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


def grad(
    graph: Graph,
    wrt: Sequence[Node | int | str] | None = None,
    seeds: str = "auto",
    also: Sequence[Node] = (),
) -> Graph:
    """Append reverse-mode gradient nodes to (a copy of) `graph`.

    Returns a graph whose outputs are the original outputs followed by d(outputs)/d(w) for each
    `w` in `wrt` (default: every floating-point input). With one scalar output the seed is 1;
    otherwise (or with `seeds="inputs"`) each float output gets a seed input (kind "seed", named
    `grad_<output>`), so the result computes vector-Jacobian products.
    """
    if not isinstance(graph, Graph):
        raise ArgumentTypeError(
            f"tn.grad takes a Graph (from tn.trace), got {type(graph).__name__}; to "
            f"differentiate a function, trace it first: tn.grad(tn.trace(fn, *example_arrays))"
        )
    wrt_nodes = _resolve(graph, wrt)
    outs = list(graph.outputs)
    names = graph.meta.output_names or [f"out{k}" for k in range(len(outs))]
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
                seed = (
                    tape.constant(1.0, out.dtype)
                    if scalar_seed
                    else tape.input(out.shape, out.dtype, name=f"grad_{names[k]}", kind="seed")
                )
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
    result.outputs = outs + [g.node for g in grads] + list(also)
    if tape.replacements:
        result = _apply_replacements(result, {n: v.node for n, v in tape.replacements.items()})
    kept = len(result.outputs) - len(also)
    result.also, result.outputs = result.outputs[kept:], result.outputs[:kept]
    result.meta = replace(
        result.meta,
        n_forward_outputs=len(outs),
        output_names=(*names, *[f"grad_{w.name}" for w in wrt_nodes]),
        wrt=tuple(w.name for w in wrt_nodes),
        seeds=tuple(s.name for s in seed_nodes if s.op == "input"),
        single_output=False,
    )
    return result


def _apply_replacements(graph: Graph, replacements: dict[Node, Node]) -> Graph:
    """`graph` with each key of `replacements` replaced by its value (recorded later on the
    tape, by a VJP), and the replacement nodes nothing reads dropped again."""
    made: dict[Node, Node] = {}

    def remap(x: Node, mapping: dict[Node, Node]) -> Node:
        if x in mapping:
            return mapping[x]
        if x not in made:
            ins = tuple([remap(i, mapping) for i in x.inputs])
            made[x] = x if ins == x.inputs else x.with_inputs(ins)
        return made[x]

    def visit(n: Node, mapping: dict[Node, Node]) -> Node | None:
        if n in made:
            return made[n]
        rep = replacements.get(n)
        return None if rep is None else remap(rep, mapping)

    new = graph.rebuild(visit)
    droppable = set(made.values()) - set(new.outputs)
    used: set[Node] = set()
    kept = []
    for n in reversed(new.nodes):
        if n not in droppable or n in used:
            kept.append(n)
            used.update(n.inputs)
    return Graph(kept[::-1], new.inputs, new.outputs, new.meta)


def _backprop_node(
    n: Node, g: Var, needs: set[Node], tape: Tape, cot: dict[Node, list[Var]]
) -> None:
    wants = tuple([i in needs for i in n.inputs])
    if True not in wants:
        return
    op = get_op(n.op)
    grads = op.vjp(g, Var(n, tape), *[Var(i, tape) for i in n.inputs], wants=wants, **n.attrs)
    for i, gi, w in zip(n.inputs, grads, wants):
        if not w or gi is None:
            continue
        if gi.shape != i.shape:
            raise GraphError(
                f"VJP of {n.op} produced a gradient of shape {gi.shape} for an input "
                f"of shape {i.shape}"
            )
        if gi.dtype != i.dtype:
            gi = F.cast(gi, i.dtype)
        acc = cot.get(i)
        if acc is None:
            cot[i] = [gi]
        else:
            acc.append(gi)


def _needed(outputs: Sequence[Node]) -> set[Node]:
    needed: set[Node] = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(n.inputs)
    return needed


def split_forward_backward(joint: Graph, n_forward_outputs: int) -> tuple[Graph, Graph]:
    """Split the output of `grad` into a forward and a backward program.

    Shapes: `fwd` takes the non-seed inputs of `joint` and returns the forward outputs followed
    by the saved values (forward nodes the backward reads; graph inputs are not saved, the
    backward takes them itself). `bwd` takes the saved values (inputs of kind "saved"), then
    the seeds, then the original inputs it reads, and returns the gradients. `bwd.meta` (GraphMeta)
    holds `saved_names`, `seed_names`, `input_names` in that order; `fwd.meta.saved_outputs`
    the positions of the saved outputs. Running fwd then bwd equals running `joint`.
    """
    fwd_outs, grad_outs = joint.outputs[:n_forward_outputs], joint.outputs[n_forward_outputs:]
    forward = _needed(fwd_outs)
    # views of inputs (x[t], W.T) are free to redo: the backward recomputes them, never saves
    redo: set[Node] = set()
    for n in joint.nodes:
        if (
            n.op not in ("input", "constant")
            and get_op(n.op).view
            and all(i.op in ("input", "constant") or i in redo for i in n.inputs)
        ):
            redo.add(n)
    backward, read, saved = saved_split(joint, forward, redo, grad_outs, fwd_outs)
    fwd_inputs = [n for n in joint.inputs if n.kind != "seed"]
    kept = forward.union(fwd_inputs)
    bwd = _backward_graph(joint, backward, saved, read, grad_outs)
    names = tuple(joint.meta.output_names)
    fwd = Graph(
        [n for n in joint.nodes if n in kept],
        fwd_inputs,
        list(fwd_outs) + saved,
        replace(
            joint.meta,
            n_forward_outputs=n_forward_outputs,
            single_output=False,
            saved_outputs=tuple(range(n_forward_outputs, n_forward_outputs + len(saved))),
            saved_names=bwd.meta.saved_names,
            output_names=names[: len(names) - len(grad_outs)] if grad_outs else names,
        ),
    )
    return fwd, bwd


def saved_split(
    joint: Graph, forward: set, redo: set, grad_outs: list, kept, products: bool = False
) -> tuple[list, dict, list]:
    """(the backward's nodes, what they read, the forward values it keeps): `redo` (values
    the backward recomputes) grows by the ones redone cheaply from values it has anyway
    (`redone_cheaply`; `kept`: the values the forward returns; `products`: products too)."""
    backward, read = backward_nodes(joint, forward, redo, grad_outs)
    cheap = redone_cheaply(forward, read, redo, kept, products)
    if cheap:
        redo |= cheap
        backward, read = backward_nodes(joint, forward, redo, grad_outs)
    saved = [
        n
        for n in joint.nodes
        if n in forward and n in read and n not in redo and n.op not in ("input", "constant")
    ]
    return backward, read, saved


def backward_nodes(joint: Graph, forward: set, redo: set, grad_outs: list) -> tuple[list, dict]:
    """The backward's nodes (the gradients' work, and forward work it redoes) and what they
    read (the gradients too)."""
    needed = _needed(grad_outs)
    backward = [n for n in joint.nodes if n in needed and (n not in forward or n in redo)]
    read = dict.fromkeys(i for n in backward for i in n.inputs)
    read.update(dict.fromkeys(grad_outs))
    return _just_in_time(backward, redo), read


def _just_in_time(nodes: list, redo: set) -> list:
    """`nodes` with each redone elementwise value moved to just before its first reader (on
    the forward's place in the tape, all T steps' values would be live at once)."""
    late = {n for n in nodes if n in redo and n.op in RECOMPUTED}
    if not late:
        return nodes
    out: list = []
    placed: set = set()

    def place(i: Node) -> None:  # a redone value after the redone values it reads (a chain)
        placed.add(i)
        for j in i.inputs:
            if j in late and j not in placed:
                place(j)
        out.append(i)

    for n in nodes:
        if n in late:
            continue
        for i in n.inputs:
            if i in late and i not in placed:
                place(i)
        out.append(n)
    for n in nodes:
        if n in late and n not in placed:
            place(n)
    return out


RECOMPUTED = frozenset({"tanh", "sigmoid"})  # one cheap elementwise pass over its input


def redone_cheaply(forward: set, read: dict, redo: set, kept, products: bool = False) -> set[Node]:
    """Values the backward reads that are one cheap elementwise op (`RECOMPUTED`) of a value
    it has anyway (one it reads and so keeps too, or one the forward returns: an LSTM's
    tanh(c_t) from c_t, the cell state its `cells` field holds): redone by the backward
    instead of kept from the forward -- a T*B*H array less between forward and backward for
    one tanh per step. Deterministic, so the backward sees the same values. `products` (a
    scan body's VJP, scan_grad): also a product a * b of two such values of its shape (GRU's
    r_t * h_{t-1}, read only by the weight gradient of W_hn: kept, it would be the one (B, H)
    column of the forward's gate rows the backward reads after its reverse loop, so that
    loop's dZ rows could not be written over them, PlanOptions.dz_in_gates)."""
    free = set(kept)
    out = set()

    def have(x: Node) -> bool:
        return x.op != "constant" and (x in free or (x in read and x in forward))

    for n in read:
        if n not in forward or n in redo or n in free:
            continue
        if n.op in RECOMPUTED:
            if have(n.inputs[0]):
                out.add(n)
        elif (
            products
            and n.op == "mul"
            and len(n.inputs) == 2
            and n.inputs[0] is not n.inputs[1]
            and all(x.shape == n.shape and x.dtype == n.dtype and have(x) for x in n.inputs)
        ):
            out.add(n)
    return out


def _backward_graph(
    joint: Graph, backward: list[Node], saved: list[Node], read: dict, grad_outs: list[Node]
) -> Graph:
    mapping: dict[Node, Node] = {}
    for k, n in enumerate(saved):
        mapping[n] = n.replace(
            op="input", inputs=(), attrs={"kind": "saved"}, value=None, name=f"saved{k}_{n.op}"
        )
    seeds = [n for n in joint.inputs if n.kind == "seed"]
    originals = [n for n in joint.inputs if n.kind != "seed" and n in read]
    constants = [n for n in joint.nodes if n.op == "constant" and n in read]
    nodes = [mapping[n] for n in saved] + seeds + originals + constants
    for n in backward:
        if n.op in ("input", "constant"):
            continue
        ins = tuple([mapping.get(i, i) for i in n.inputs])
        mapping[n] = new = n if ins == n.inputs else n.with_inputs(ins)
        nodes.append(new)
    inputs = [mapping[n] for n in saved] + seeds + originals
    names = joint.meta.output_names
    meta = replace(
        joint.meta,
        single_output=False,
        output_names=names[-len(grad_outs) :] if grad_outs else (),
        saved_names=tuple(mapping[n].name for n in saved),
        seed_names=tuple(n.name for n in seeds),
        input_names=tuple(n.name for n in originals),
    )
    return Graph(nodes, inputs, [mapping.get(o, o) for o in grad_outs], meta)
