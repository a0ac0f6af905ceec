"""The loop IR the rolled Sequencer emits: `scan` and `inline` of tapernn.scan. While the scan
op has no VJP yet (branch hscan lands it in parts), `scan` expands the body step by step with
`inline` (the same graph as an unrolled trace), so rolled programs stay correct meanwhile."""

from __future__ import annotations

from typing import Any

from .. import tracing
from ..ops.registry import get_op
from ..scan import inline
from ..scan import scan as _scan

__all__ = ["inline", "scan"]


class _Expanded:
    def __init__(self, carries: list, ys: list):
        self.carries, self.ys = carries, ys


def scan(
    body: Any,
    inits: list,
    xs: list,
    invariants: list,
    reverse: bool = False,
    length: int | None = None,
) -> Any:
    if get_op("scan").vjp is not None:
        return _scan(body, inits, xs, invariants, reverse=reverse, length=length)
    from .. import functional as F

    n_c = len(inits)
    L = xs[0].shape[0] if xs else length
    carries, rows = list(inits), [None] * L
    for t in range(L - 1, -1, -1) if reverse else range(L):
        with tracing.step(t):
            outs = inline(body, carries + [x[t] for x in xs] + list(invariants), step=t)
        carries, rows[t] = outs[:n_c], outs[n_c:]
    with tracing.step(None):
        ys = [F.stack([r[j] for r in rows], 0) for j in range(len(body.outputs) - n_c)]
    return _Expanded(carries, ys)
