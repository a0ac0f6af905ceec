"""Benchmark of the compiler on a hand-written per-gate LSTM (forward + backward): node counts,
kernels per call, bytes and time per call with no passes vs the DEFAULT pipeline, and compile
time against T. Usage: python tools/bench_compiler.py [T B I H]. Times are min over repeats."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tapernn as tn  # noqa: E402
from lstm_fixture import fast_lstm_graph, lstm_graph  # noqa: E402


def best_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(T: int = 50, B: int = 32, I: int = 256, H: int = 256) -> None:
    graph, arrays = lstm_graph(T, B, I, H)
    print(f"per-gate LSTM T={T} B={B} I={I} H={H}: {len(graph.nodes)} nodes traced + grad")
    print(f"{'pipeline':<10}{'nodes':>8}{'kernels':>9}{'matmuls':>9}{'naive MB':>10}"
          f"{'planned MB':>12}{'peak MB':>9}{'compile s':>11}{'run ms':>9}")
    results = {}
    fast_graph, fast_arrays = fast_lstm_graph(T, B, I, H)
    for name, passes in (("none", []), ("DEFAULT", None), ("fast4H", None)):
        start = time.perf_counter()
        compiled = tn.compile(fast_graph if name == "fast4H" else graph, passes=passes)
        args = fast_arrays if name == "fast4H" else arrays
        compile_s = time.perf_counter() - start
        run_s = best_time(lambda: compiled(*args))
        r = compiled.report
        results[name] = compiled(*args)
        print(f"{name:<10}{len(compiled.graph.nodes):>8}{r.kernels:>9}"
              f"{compiled.graph.op_counts().get('matmul', 0):>9}{r.naive_bytes / 1e6:>10.1f}"
              f"{r.planned_bytes / 1e6:>12.1f}{r.peak_bytes / 1e6:>9.1f}{compile_s:>11.2f}"
              f"{run_s * 1e3:>9.1f}")
    worst = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-300))
                for a, b in zip(results["DEFAULT"], results["none"]))
    print(f"largest relative difference DEFAULT vs none: {worst:.2e}")
    print("fast4H: the same LSTM written with fused 4H weights (FastLSTM-style), DEFAULT passes")
    print("\ncompile time of DEFAULT against T (B=4, I=H=8):")
    for t in (10, 20, 40, 80):
        g, _ = lstm_graph(t, 4, 8, 8)
        start = time.perf_counter()
        tn.compile(g)
        print(f"  T={t:<4} nodes={len(g.nodes):<6} {time.perf_counter() - start:.2f} s")
    print("\n" + str(tn.compile(graph).report))


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:5]])
