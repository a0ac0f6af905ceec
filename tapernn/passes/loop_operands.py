"""contiguous_loop_weights: a loop's weight passed in transposed (a view, h @ U^T in a batch-major
recurrent step) and read by a matmul in the body is copied C-contiguous once per loop call, so
every step's GEMM is NN instead of NT (OpenBLAS float32: 6-9 % faster, BENCHMARKS.md "hspeed").
Not when the numba backend runs all the body's products over it packed (scan_pack: the pack
reads any strides; hgemm2)."""

from __future__ import annotations

import math

import numpy as np

from ..graph import Graph, Node
from .layout import _session
from .rewrite import derive, substitute

# weights smaller than this keep the view: the copy would cost more than the steps save, and the
# numba whole-loop kernels (values of at most 4096 elements) see exactly the graphs they did
MIN_ELEMENTS = 65536


def contiguous_loop_weights(graph: Graph) -> Graph:
    """Each `scan` invariant that is `transpose(W)` of a 2-D W with at least MIN_ELEMENTS
    elements and a matmul operand in the body becomes `transpose_copy(W)` (one per W)."""
    copies: dict[Node, Node] = {}
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op != "scan":
            continue
        body, first = n.attrs["body"], n.attrs["n_carry"] + n.attrs["n_xs"]
        operands = {i for m in body.nodes if m.op == "matmul" for i in m.inputs}
        # (a merged gate weight is read through its blocks' slices: merge_xs.py)
        operands |= {m.inputs[0] for m in body.nodes if m.op == "getitem" and m in operands}
        ins = list(n.inputs)
        packed = _session().packed
        for k in range(first, len(ins)):
            t = ins[k]
            if (
                t.op == "transpose"
                and len(t.shape) == 2
                and tuple(t.attrs["axes"]) == (1, 0)
                and math.prod(t.shape) >= MIN_ELEMENTS
                and body.inputs[k] in operands
                and not (packed and _packed_only(body, body.inputs[k], packed))
            ):
                w = t.inputs[0]
                if w not in copies:
                    copies[w] = derive(t, "transpose_copy", [w])
                ins[k] = copies[w]
        if tuple(ins) != n.inputs:
            subst[n] = n.with_inputs(tuple(ins))
    return substitute(graph, subst)


def _packed_only(body: Graph, w: Node, packed: tuple[int, int]) -> bool:
    """Whether every reader of the body input `w` is a step GEMM `a @ w` the numba backend runs
    packed (`packed` = (min rows, min elements): backends/packed.rule; scan_pack): it packs the
    weight once per loop call from any strides, so a contiguous copy first would only cost a
    W-sized buffer and a copy per call."""
    readers = [m for m in body.nodes if w in m.inputs]
    return bool(readers) and all(
        m.op == "matmul"
        and m.inputs[1] is w
        and m.inputs[0] is not w
        and len(m.inputs[0].shape) == 2
        and m.inputs[0].shape[0] >= packed[0]
        and m.inputs[0].dtype == w.dtype
        and w.dtype in (np.float32, np.float64)
        and math.prod(w.shape) >= packed[1]
        for m in readers
    )
