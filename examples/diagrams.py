"""Example diagrams of an unrolled LSTM: op level and module level, forward, backward and both,
collapsed for long sequences, and one diagram per compiler pass. Writes into ./diagrams/.

Usage: python examples/diagrams.py [out_dir]     (SVG/PNG need Graphviz `dot`; .dot files do not)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import functional as F
from tapernn import tracing
from tapernn.apps.models import build_model


def lstm_transducer(
    steps: int = 3, batch: int = 2, n_in: int = 3, hidden: int = 4, n_out: int = 2
) -> tn.Graph:
    """A per-gate LSTM written with the functional API, unrolled over `steps`, with a linear
    output per step (a transducer). Each step records `with tracing.step(t), tracing.scope(...)`,
    which is all the diagrams need to put it in cluster t and in the "LSTM" box.

    Shapes: x_t (batch, n_in) -> h_t (batch, hidden) -> y_t (batch, n_out).
    """
    tape = tracing.Tape()
    with tape.recording():
        h = tape.input((batch, hidden), name="h0", kind="state")
        c = tape.input((batch, hidden), name="c0", kind="state")
        with tracing.scope("seq.lstm"):
            gates = {
                g: (
                    tape.input((n_in, hidden), name=f"W_{g}", kind="param"),
                    tape.input((hidden, hidden), name=f"U_{g}", kind="param"),
                    tape.input((hidden,), name=f"b_{g}", kind="param"),
                )
                for g in "ifog"
            }
        with tracing.scope("seq.out"):
            V = tape.input((hidden, n_out), name="V", kind="param")
        ys = []
        for t in range(steps):
            with tracing.step(t):
                x = tape.input((batch, n_in), name=f"x_{t}")
                with tracing.scope("seq.lstm"):
                    z = {g: F.matmul(x, W) + F.matmul(h, U) + b for g, (W, U, b) in gates.items()}
                    c = F.sigmoid(z["f"]) * c + F.sigmoid(z["i"]) * F.tanh(z["g"])
                    h = F.sigmoid(z["o"]) * F.tanh(c)
                with tracing.scope("seq.out"):
                    ys.append(F.matmul(h, V))
    graph = tape.graph
    graph.outputs = [y.node for y in ys]
    graph.meta = tn.graph.GraphMeta(
        output_names=tuple(f"y_{t}" for t in range(steps)),
        scopes={"seq": "Sequencer", "seq.lstm": "LSTM", "seq.out": "Linear"},
    )
    return graph


def main(out: Path) -> None:
    fmt = "svg" if shutil.which("dot") else "dot"
    if fmt == "dot":
        print("Graphviz `dot` not found: writing .dot files only (apt-get install graphviz)")
    out.mkdir(parents=True, exist_ok=True)  # (its own folder: tn.render writes into existing ones)
    forward = lstm_transducer()
    both = tn.grad(forward)
    written = [
        tn.render(forward, out / f"lstm_module_forward.{fmt}", level="module"),
        tn.render(both, out / f"lstm_module_both.{fmt}", level="module", view="both"),
        tn.render(forward, out / f"lstm_op_forward.{fmt}"),
        tn.render(both, out / f"lstm_op_backward.{fmt}", view="backward"),
        tn.render(both, out / f"lstm_op_both.{fmt}", view="both"),
        tn.render(forward, out / f"lstm_op_by_scope.{fmt}", cluster_by="scope"),
        tn.render(
            tn.grad(lstm_transducer(steps=50)),
            out / f"lstm50_collapsed.{fmt}",
            view="both",
            collapse=True,
        ),
    ]
    written += tn.render_passes(both, out / "passes", fmt=fmt)
    # the tutorial's acceptor and transducer, drawn from the real modules after a forward/backward
    for name in ("tutorial-acceptor", "tutorial-transducer"):
        model, x, grad_out = build_model(name, steps=4, batch=3, size=6)
        model.forward(x)
        model.backward(x, grad_out)
        stem = name.replace("tutorial-", "")
        written.append(tn.render(model, out / f"{stem}_module.{fmt}", level="module"))
        written.append(
            tn.render(model, out / f"{stem}_module_both.{fmt}", level="module", view="both")
        )
        written.append(tn.render(model, out / f"{stem}_compiled.{fmt}", compiled=True))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the example diagrams (SVG) to a folder.")
    parser.add_argument(
        "out", nargs="?", default="diagrams", help="folder to write into (default: diagrams)"
    )
    main(Path(parser.parse_args().out))
