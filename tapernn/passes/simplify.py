"""View simplification: a slice of a slice is one slice, a transpose of a transpose one
transpose (or none), a reshape of a reshape one reshape -- fewer view calls per step once
hoisting and gate fusion have sliced the same product twice (rows per step, columns per gate)."""
from __future__ import annotations

from ..graph import Graph, Node
from .concat import basic_ranges, slice_axis


def _simplified(n: Node, x: Node) -> Node | None:
    if n.op == "getitem" and x.op == "getitem" and basic_ranges(n) is not None \
            and basic_ranges(x) is not None and n.ndim == x.ndim == x.inputs[0].ndim:
        result = x
        for axis, (start, stop) in enumerate(basic_ranges(n)):
            if (start, stop) != (0, x.shape[axis]):
                result = slice_axis(n, result, axis, start, stop)
        return result
    if n.op == "transpose" and x.op == "transpose":
        axes = tuple(x.attrs["axes"][a] for a in n.attrs["axes"])
        inner = x.inputs[0]
        if axes == tuple(range(len(axes))):
            return inner
        return n.replace(inputs=(inner,), attrs={"axes": axes})
    if n.op == "reshape" and x.op == "reshape":
        inner = x.inputs[0]
        return inner if inner.shape == n.shape else n.replace(inputs=(inner,))
    return None


def simplify_views(graph: Graph) -> Graph:
    def visit(n: Node, mapping: dict[Node, Node]) -> Node | None:
        if n.op not in ("getitem", "transpose", "reshape"):
            return None
        x = mapping.get(n.inputs[0], n.inputs[0])
        return _simplified(n, x)

    return graph.rebuild(visit).eliminate_dead_code()
