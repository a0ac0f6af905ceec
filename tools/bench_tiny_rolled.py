"""Issue 16's (1, 5, 5) target side by side: the steady training step of bench_rolled.py
(zero_grad, forward, backward, update_parameters) of Sequencer(<cell>(H, H)) float32, rolled on
NumPy against unroll=True on NumPy, and rolled on numba and "auto"; this checkout and (with
--baseline) another checkout's package in the same process, all contenders in interleaved
rounds (the order reversed every other round), thread CPU time per step.

    python tools/bench_tiny_rolled.py --baseline /tmp/base --cells FastLSTM LSTM GRU
    python tools/bench_tiny_rolled.py --config 32,50,256 --modes numpy --steps 3 --rounds 5

Prints per contender the median and the min of the rounds' per-step means (us) and, for the
NumPy rolled rows, rolled / unrolled of the same checkout (medians; mins)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(HERE, "tools"))

from bench_overhead import load_package

MODES = {  # mode -> (backend, unroll)
    "numpy": ("numpy", False),
    "unrolled": ("numpy", True),
    "numba": ("numba", False),
    "auto": ("auto", False),
}


def make_step(tn, cell: str, mode: str, B: int, T: int, H: int):
    backend, unroll = MODES[mode]
    seq = tn.nn.Sequencer(getattr(tn.nn, cell)(H, H), unroll=unroll).astype(np.float32)
    seq.set_plan_options(tn.PlanOptions(backend=backend))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    g = np.ones((T, B, H), np.float32)

    def step() -> None:
        seq.zero_grad_parameters()
        seq.forward(x)
        seq.backward(x, g)
        seq.update_parameters(0.01)

    # ("auto" runs NumPy until its switch call, 2,000 by default: past it before timing)
    for _ in range(2100 if mode == "auto" else 3):
        step()
    return step


def measure(step, n: int) -> float:
    c0 = time.thread_time_ns()
    for _ in range(n):
        step()
    return (time.thread_time_ns() - c0) / n / 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="another checkout (its tapernn runs interleaved)")
    ap.add_argument("--cells", nargs="+", default=["FastLSTM", "LSTM", "GRU"])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--config", default="1,5,5", help="B,T,H")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    B, T, H = (int(v) for v in args.config.split(","))
    os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")
    packages = [("this", load_package(HERE, "tapernn_this"))]
    if args.baseline:
        packages.insert(0, ("base", load_package(args.baseline, "tapernn_base")))
    steps = {}
    for cell in args.cells:
        for name, tn in packages:
            for mode in args.modes:
                steps[(cell, name, mode)] = make_step(tn, cell, mode, B, T, H)
    load = os.getloadavg()[0]
    times: dict = {k: [] for k in steps}
    for r in range(args.rounds):
        for k in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            times[k].append(measure(steps[k], args.steps))
    print(
        f"(B, T, H) = ({B}, {T}, {H}) float32, {args.rounds} rounds x {args.steps} steps, "
        f"thread CPU per step (us), load {load:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(f"{'cell':9s} {'package':8s} {'mode':9s} {'median':>8s} {'min':>8s}  rolled/unrolled")
    for (cell, name, mode), ts in times.items():
        med, low = statistics.median(ts), min(ts)
        ratio = ""
        if mode == "numpy" and (cell, name, "unrolled") in times:
            u = times[(cell, name, "unrolled")]
            ratio = f"{med / statistics.median(u):.3f} (min {low / min(u):.3f})"
        print(f"{cell:9s} {name:8s} {mode:9s} {med:8.1f} {low:8.1f}  {ratio}")


if __name__ == "__main__":
    main()
