"""The rolled-loop benchmark (`tools/bench_compiler.py --scan`, issue 16): a hand-built fused-gate
LSTM step scanned over T (tests/scan_bodies.py), forward + backward (trace, grad, every pass,
plans, code generation, first run) at T = 10, 1,000, 10,000 (compile time should be flat in T),
then steady-state training steps rolled vs unrolled (`tn.unroll_scans`, the same graph) side
by side, and the loop's own per-step cost on a near-empty body. Times are min over repeats."""

from __future__ import annotations

import os
import time

import numpy as np
from scan_bodies import lstm_arrays, lstm_body

import tapernn as tn


def training_graph(T: int, B: int, D: int, H: int, dtype=np.float64):
    body = lstm_body(B, D, H, dtype)

    def loss(*v):
        r = tn.scan(body, v[:2], v[2:3], v[3:])
        return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(r.carries[1])

    arrays = lstm_arrays(np.random.default_rng(T), T, B, D, H, dtype)
    return loss, arrays


def first_call(T: int, B: int = 2, D: int = 8, H: int = 8) -> dict[str, float]:
    """Seconds of each stage of the first forward + backward (a fresh body: nothing cached)."""
    start = time.perf_counter()
    loss, arrays = training_graph(T, B, D, H)
    graph = tn.trace(loss, *arrays)
    traced = time.perf_counter()
    joint = tn.grad(graph)
    grads = time.perf_counter()
    compiled = tn.compile(joint)
    built = time.perf_counter()
    compiled(*arrays)
    ran = time.perf_counter()
    return {
        "trace": traced - start,
        "grad": grads - traced,
        "compile": built - grads,
        "first run": ran - built,
        "nodes": len(joint.nodes),
    }


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def rolled_vs_unrolled(T: int, B: int, H: int, dtype, repeats: int) -> tuple[float, float, float]:
    """(rolled s, unrolled s, largest relative difference) of one training step."""
    loss, arrays = training_graph(T, B, H, H, dtype)
    joint = tn.grad(tn.trace(loss, *arrays))
    rolled, unrolled = tn.compile(joint), tn.compile(joint, unroll=True)
    a, b = rolled(*arrays), unrolled(*arrays)
    diff = max(float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-30)) for x, y in zip(a, b))
    time.sleep(0.25)
    t_rolled = best(lambda: rolled(*arrays), repeats)
    time.sleep(0.25)
    t_unrolled = best(lambda: unrolled(*arrays), repeats)
    return t_rolled, t_unrolled, diff


def loop_overhead(T: int = 10_000, repeats: int = 5) -> tuple[float, float]:
    """Microseconds per step of a scan whose body is one add on 1 element: the loop's own
    cost plus the smallest body program's call; and of calling that body program alone."""
    body = tn.trace(lambda h, x: [h + x], np.zeros(1), np.zeros(1))
    compiled = tn.compile(
        tn.trace(lambda h, xs: tn.scan(body, [h], [xs]).carries[0], np.zeros(1), np.zeros((T, 1)))
    )
    h, xs = np.zeros(1), np.ones((T, 1))
    per_step = best(lambda: compiled(h, xs), repeats) / T
    fn = tn.compile(body).program.fn
    x0 = xs[0]

    def alone():
        for _ in range(T):
            fn(h, x0)

    return per_step * 1e6, best(alone, repeats) / T * 1e6


def scan_main(repeats: int = 5) -> int:
    load = os.getloadavg()
    print(
        f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
        f"{os.cpu_count()} cores"
    )
    print("\nfirst forward+backward of a scanned LSTM step, B=2, D=H=8, float64 (seconds):")
    print(f"{'T':>7}{'nodes':>7}{'trace':>8}{'grad':>8}{'compile':>9}{'first run':>11}")
    rows = {}
    for T in (10, 1_000, 10_000):
        r = rows[T] = first_call(T)
        print(
            f"{T:>7}{r['nodes']:>7}{r['trace']:>8.3f}{r['grad']:>8.3f}{r['compile']:>9.3f}"
            f"{r['first run']:>11.3f}"
        )
    build = {T: r["trace"] + r["grad"] + r["compile"] for T, r in rows.items()}
    print(f"trace+grad+compile T=10,000 / T=10: {build[10_000] / build[10]:.2f}x")
    print(f"\nsteady-state training step, rolled vs unrolled (same graph), min of {repeats}:")
    print(
        f"{'(B, T, H)':<16}{'dtype':<9}{'rolled ms':>10}{'unrolled ms':>12}{'ratio':>7}"
        f"{'rel diff':>10}"
    )
    for (B, T, H), dtype in (((32, 50, 256), np.float32), ((1, 5, 5), np.float64)):
        rolled, unrolled, diff = rolled_vs_unrolled(T, B, H, dtype, repeats)
        print(
            f"{(B, T, H)!s:<16}{np.dtype(dtype).name:<9}{rolled * 1e3:>10.3f}"
            f"{unrolled * 1e3:>12.3f}{rolled / unrolled:>7.2f}{diff:>10.1e}"
        )
    per_step, alone = loop_overhead(repeats=repeats)
    print(
        f"\nloop cost per step (body: one add on 1 element, T=10,000): {per_step:.2f} us; "
        f"the body program called alone: {alone:.2f} us; the loop's own share: "
        f"{per_step - alone:.2f} us"
    )
    return 0
