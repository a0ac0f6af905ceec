"""Time diagram rendering of a long unrolled LSTM: T=100, H=256, forward+backward, op level.

Targets: full diagram (DOT build + `dot -Tsvg`) < 30 s; collapsed view < 2 s. Prints, never asserts.
Usage: python tools/bench_diagrams.py [--steps 100] [--hidden 256] [--format svg]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn.export.samples import lstm_graph


def timed(label: str, fn) -> float:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    print(f"{label:<48}{elapsed:>8.2f} s")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--format", default="svg")
    args = ap.parse_args()
    graph = tn.grad(lstm_graph(steps=args.steps, batch=16, n_in=64, hidden=args.hidden))
    print(f"graph: {len(graph.nodes)} nodes, T={args.steps}, H={args.hidden}")
    out = Path(tempfile.mkdtemp(prefix="tapernn_bench_"))
    fmt = args.format
    timed("to_dot, op level, both (no rendering)", lambda: tn.to_dot(graph, view="both"))
    full = timed(
        f"render op level, both -> .{fmt}",
        lambda: tn.render(graph, out / f"full.{fmt}", view="both"),
    )
    coll = timed(
        f"render op level, both, collapse=True -> .{fmt}",
        lambda: tn.render(graph, out / f"collapsed.{fmt}", view="both", collapse=True),
    )
    timed(
        f"render module level, both -> .{fmt}",
        lambda: tn.render(graph, out / f"module.{fmt}", level="module", view="both"),
    )
    print(
        f"targets: full < 30 s ({'ok' if full < 30 else 'MISSED'}), "
        f"collapsed < 2 s ({'ok' if coll < 2 else 'MISSED'}); files in {out}"
    )


if __name__ == "__main__":
    main()
