"""Summing within steps: a column sum over a stack of per-step values that nothing else reads,
sum(concat_t(p_t), axis=0), becomes sum(concat_t(sum(p_t, axis=0)), axis=0): each step's rows
are summed as they are made, and the stack holds T rows instead of T*B. A peephole LSTM's
gradients dp_i, dp_f, dp_o = sums of dz_k * c over steps and batch stacked a (T*B, 3H) copy of
products only to add it up (4.7 MiB at B=32, T=50, H=256 float32, its backward's peak).

Stacks another node reads too (the gate gradients [dz_i dz_g dz_f dz_o]_t the weight GEMM
needs, whose column sums are the bias gradients) are left alone, as are small stacks, where T
more reductions would cost more than the memory they save."""

from __future__ import annotations

from ..graph import Graph, Node
from .rewrite import derive, read_once

MIN_STACK_BYTES = 64 * 1024


def sum_within_steps(graph: Graph) -> Graph:
    once = read_once(graph)
    targets: set[Node] = set()
    pieces: set[Node] = set()
    for n in graph.nodes:
        x = n.inputs[0] if n.op == "sum" else None
        if x is None or x.op != "concat" or x.attrs["axis"] != 0 or x.ndim != 2:
            continue
        if n.attrs["axis"] != (0,) or n.attrs["keepdims"] or not once(x):
            continue
        if (
            x.nbytes < MIN_STACK_BYTES
            or len(set(x.inputs)) != len(x.inputs)
            or any(p.shape[0] < 2 or p in pieces for p in x.inputs)
        ):
            continue
        targets.add(n)
        pieces.update(x.inputs)
    if not targets:
        return graph
    # each piece and its row sum right after the piece's last operand: the step's products
    # die there, not where the stack was built (passes put stacks next to their reader)
    pos = {n: k for k, n in enumerate(graph.nodes)}
    after: dict[Node, list[Node]] = {}
    for p in pieces:
        anchor = max(p.inputs, key=pos.__getitem__) if p.inputs else None
        if anchor is not None and anchor not in targets:
            after.setdefault(anchor, []).append(p)
    moved = {p for ps in after.values() for p in ps}
    mapping: dict[Node, Node] = {}
    row: dict[Node, Node] = {}
    nodes: list[Node] = []

    def emit(n: Node) -> None:
        ins = tuple([mapping.get(i, i) for i in n.inputs])
        mapping[n] = new = n if ins == n.inputs else n.with_inputs(ins)
        nodes.append(new)
        if n in pieces:
            row[n] = derive(new, "sum", (new,), axis=(0,), keepdims=True)
            nodes.append(row[n])
        for p in after.get(n, ()):
            emit(p)

    for n in graph.nodes:
        if n in targets:
            x = n.inputs[0]
            stack = derive(x, "concat", [row[p] for p in x.inputs], axis=0)
            mapping[n] = total = derive(n, "sum", (stack,), axis=(0,), keepdims=False)
            nodes += [stack, total]
        elif n not in moved:
            emit(n)
    outputs = [mapping.get(o, o) for o in graph.outputs]
    return Graph(nodes, graph.inputs, outputs, graph.meta).eliminate_dead_code()
