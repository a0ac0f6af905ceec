"""Small unrolled graphs built with the functional API, for diagrams, golden files and benchmarks.

Nothing here depends on `tapernn.nn`: the LSTM is written gate by gate, as a user's custom cell.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..graph import Graph, GraphMeta
from ..tracing import Tape, Var, scope, step

GATES = ("i", "f", "o", "g")


def lstm_graph(
    steps: int = 3,
    batch: int = 2,
    n_in: int = 3,
    hidden: int = 4,
    n_out: int | None = None,
    dtype=np.float64,
) -> Graph:
    """A per-gate LSTM unrolled over `steps`, one data input `x_t` and one output per step.

    Shapes: x_t (batch, n_in); h0, c0 (batch, hidden); outputs h_t (batch, hidden), or
    y_t = h_t·V + c (batch, n_out) when `n_out` is given (a transducer head in scope "seq.out").
    Nodes of step t carry `step=t`; the cell records in scope "seq.lstm". `meta.scopes` names
    the modules the way `tapernn.nn` does, so module-level diagrams have labels.
    """
    tape = Tape()
    with tape.recording():
        h = tape.input((batch, hidden), dtype, name="h0", kind="state")
        c = tape.input((batch, hidden), dtype, name="c0", kind="state")
        params = _lstm_params(tape, n_in, hidden, dtype)
        head = None
        if n_out is not None:
            with scope("seq.out"):
                head = (
                    tape.input((hidden, n_out), dtype, name="V", kind="param"),
                    tape.input((n_out,), dtype, name="c", kind="param"),
                )
        outputs = []
        for t in range(steps):
            with step(t):
                x = tape.input((batch, n_in), dtype, name=f"x_{t}", kind="data")
                with scope("seq.lstm"):
                    h, c = _lstm_cell(x, h, c, params)
                if head is None:
                    outputs.append(h)
                    continue
                with scope("seq.out"):
                    outputs.append(F.matmul(h, head[0]) + head[1])
    graph = tape.graph
    graph.outputs = [v.node for v in outputs]
    graph.meta = GraphMeta(
        output_names=tuple(f"{'y' if head else 'h'}_{t}" for t in range(steps)),
        scopes={"seq": "Sequencer", "seq.lstm": "LSTM", "seq.out": "Linear"},
    )
    return graph


def _lstm_params(tape: Tape, n_in: int, hidden: int, dtype) -> dict[str, tuple[Var, Var, Var]]:
    params = {}
    with scope("seq.lstm"):
        for g in GATES:
            params[g] = (
                tape.input((n_in, hidden), dtype, name=f"W_{g}", kind="param"),
                tape.input((hidden, hidden), dtype, name=f"U_{g}", kind="param"),
                tape.input((hidden,), dtype, name=f"b_{g}", kind="param"),
            )
    return params


def _lstm_cell(x: Var, h: Var, c: Var, params: dict) -> tuple[Var, Var]:
    pre = {g: F.matmul(x, W) + F.matmul(h, U) + b for g, (W, U, b) in params.items()}
    i, f, o = F.sigmoid(pre["i"]), F.sigmoid(pre["f"]), F.sigmoid(pre["o"])
    g = F.tanh(pre["g"])
    c = f * c + i * g
    return o * F.tanh(c), c
