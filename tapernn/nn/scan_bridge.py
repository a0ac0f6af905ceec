"""The loop IR the rolled Sequencer emits: `scan` and `inline` of tapernn.scan (the IR node,
branch hscan); until that lands, `inline` replays a body and `scan` expands it step by step."""
from __future__ import annotations

from typing import Any

from .. import tracing
from ..graph import Node
from ..tracing import Var, current_tape

try:  # pragma: no cover - which one depends on the merge state
    from ..scan import inline, scan  # noqa: F401
    HAVE_SCAN = True
except ImportError:  # pragma: no cover
    HAVE_SCAN = False

    def inline(body: Any, inputs: list, step: Any = None) -> list:
        tape = current_tape()
        env = {n: v.node for n, v in zip(body.inputs, inputs)}
        t = tracing.current_step() if step is None else step
        for n in body.nodes:
            if n in env:
                continue
            new = Node(n.op, [env[i] for i in n.inputs], n.attrs, n.shape, n.dtype, step=t,
                       scope=n.scope, phase=n.phase, name=n.name, value=n.value)
            new.verified = n.verified
            env[n] = tape.add(new)
        return [Var(env[o], tape) for o in body.outputs]

    class _Result:
        def __init__(self, carries: list, ys: list):
            self.carries, self.ys = carries, ys

    def scan(body: Any, inits: list, xs: list, invariants: list, reverse: bool = False,
             length: int | None = None) -> Any:
        from .. import functional as F

        n_c = len(inits)
        L = xs[0].shape[0] if xs else length
        carries, rows = list(inits), [None] * L
        for t in (range(L - 1, -1, -1) if reverse else range(L)):
            with tracing.step(t):
                outs = inline(body, carries + [x[t] for x in xs] + list(invariants))
            carries, rows[t] = outs[:n_c], outs[n_c:]
        ys = [F.stack([r[j] for r in rows], 0) for j in range(len(body.outputs) - n_c)]
        return _Result(carries, ys)
