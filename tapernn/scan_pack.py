"""Packed loop weights (numba backend; BENCHMARKS.md "hgemm"): in a scan body compiled for the
numba backend, a step GEMM `a @ W` whose weight is loop-invariant (a weight, or a value of the
invariants alone such as the fused gate weight) with at least MIN_ELEMENTS elements becomes
`packed_matmul(a, W, pack_panels(W))`. `pack_panels` reads the invariants alone, so scan_hoist
computes it once per loop call (its prologue); every step's product then runs the packed
microkernel (backends/packed.py) instead of OpenBLAS, which re-packs W at every call.

Both ops are internal (made after grad, never differentiated). Their forwards are exact NumPy:
`packed_matmul`'s is `matmul(a, W)` (the panels unread), so the reference interpreter and the
NumPy backend agree with the kernel up to summation rounding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .backends.packed import (
    MIN_ELEMENTS,
    MIN_ROWS,
    PackedSite,
    available,
    panel_width,
)
from .errors import ShapeError
from .graph import Graph, Node
from .ops.registry import register
from .passes.rewrite import derive, substitute
from .scan_columns import pack

if TYPE_CHECKING:
    from .executor import Compiled


def _pack_shape(w, nr):
    if len(w) != 2:
        raise ShapeError(f"pack_panels: expected a 2-D weight, got shape {w}")
    return (-(-w[1] // nr), w[0], nr)


def _pack_forward(w, out=None, nr=None):
    return pack(w, out, nr)  # (pack_panels; large weights in owned calls on two threads)


def _packed_shape(a, w, p):
    if len(a) != 2 or len(w) != 2 or a[1] != w[0]:
        raise ShapeError(f"packed_matmul: expected (M, K) @ (K, N), got {a} @ {w}")
    if len(p) != 3 or p[1] != w[0] or p[0] * p[2] < w[1]:
        raise ShapeError(f"packed_matmul: panels {p} do not hold a {w} weight")
    return (a[0], w[1])


def _packed_forward(a, w, p, out=None):
    return np.matmul(a, w, out=out)


def _lower_packed(args: list[str], attrs: dict, out: str | None, bind) -> str:
    site = bind("packed_gemm", PackedSite())
    return f"{site}({', '.join(args)}, {out if out else 'None'})"


register(
    "pack_panels",
    forward=_pack_forward,
    shape=_pack_shape,
    vjp=None,
    n_inputs=1,
    differentiable=False,
    internal=True,
)
register(
    "packed_matmul",
    forward=_packed_forward,
    shape=_packed_shape,
    dtype=lambda a, w, p: np.result_type(a, w),
    vjp=None,
    lower=_lower_packed,
    n_inputs=3,
    differentiable=False,
    internal=True,
)


def pack_loop_weights(graph: Graph, invariant: set[Node]) -> Graph:
    """Each 2-D `matmul(a, W)` with W in `invariant` (nodes of the invariants alone), float32 or
    float64 operands of one dtype, `a` of at least MIN_ROWS rows and W of at least MIN_ELEMENTS
    elements (backends/packed.py) becomes
    `packed_matmul(a, W, pack_panels(W))` (one pack per W). Nothing on a CPU without a packed kernel (packed.isa)."""
    if not available():
        return graph
    packs: dict[Node, Node] = {}
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op != "matmul":
            continue
        a, w = n.inputs
        if (
            w in invariant
            and a not in invariant
            and len(a.shape) == 2
            and a.shape[0] >= MIN_ROWS
            and len(w.shape) == 2
            and a.dtype == w.dtype
            and w.dtype in (np.float32, np.float64)
            and w.shape[0] * w.shape[1] >= MIN_ELEMENTS
        ):
            if w not in packs:
                packs[w] = derive(w, "pack_panels", [w], nr=panel_width(w.dtype))
            subst[n] = derive(n, "packed_matmul", [a, w, packs[w]])
    return substitute(graph, subst)


def attach_reports(compiled: Compiled) -> None:
    """Give each PackedSite of `compiled` (a step program) its CompileReport, where a kernel
    that fails says so (packed.failed)."""
    for value in compiled.program.bound.values():
        if isinstance(value, PackedSite):
            value.report = compiled.report
