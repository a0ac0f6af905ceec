"""Where a cold call's time goes (issue 19): the tutorial-size training step's forward,
zero_grad_parameters and backward timed apart, in a loop and after the thread spun (a busy
Python loop that touches almost nothing) for each of several times, with the thread's page
faults and context switches over those calls (getrusage), and an empty call and a 5-float
fill for scale. On a shared VM the caches are refilled by the neighbours within milliseconds:
a cold call costs what the lines it touches cost from DRAM.

    python tools/bench_cold.py --cell FastLSTM --backend numba --spins 0 0.0001 0.001 0.01 0.1
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tapernn as tn  # (this checkout's)


def nothing() -> None:
    """An empty Python call, for scale."""


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="FastLSTM")
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--config", default="1,5,5")
    ap.add_argument("--spins", nargs="+", type=float, default=[0, 0.0001, 0.001, 0.01, 0.1])
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()
    os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")
    B, T, H = (int(v) for v in args.config.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    g = rng.standard_normal((T, B, H)).astype(np.float32)
    tn.set_backend(args.backend)
    seq = tn.nn.Sequencer(getattr(tn.nn, args.cell)(H, H)).astype(np.float32)
    a = np.zeros(5, np.float32)
    pc = time.perf_counter_ns

    def parts() -> tuple:
        t0 = pc()
        nothing()
        t1 = pc()
        a.fill(0)
        t2 = pc()
        seq.forward(x)
        t3 = pc()
        seq.zero_grad_parameters()
        t4 = pc()
        seq.backward(x, g)
        t5 = pc()
        return tuple((b - a_) / 1e3 for a_, b in zip((t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)))

    for _ in range(5):
        parts()
    print(f"{args.cell} [{args.backend}] {args.config} float32, load {os.getloadavg()[0]:.2f}")
    print("spin ms    call   fill |  forward   zero  backward   step | faults vcsw ivcsw")
    for rest in args.spins:
        rows, counts = [], np.zeros(3, int)
        for _ in range(args.calls):
            spin(rest)
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            rows.append(parts())
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            counts += (
                r1.ru_minflt - r0.ru_minflt,
                r1.ru_nvcsw - r0.ru_nvcsw,
                r1.ru_nivcsw - r0.ru_nivcsw,
            )
        m = [statistics.median(c) for c in zip(*rows)]
        print(
            f"{rest * 1e3:7.1f} {m[0]:7.2f} {m[1]:6.2f} | {m[2]:8.1f} {m[3]:6.1f} {m[4]:9.1f} "
            f"{sum(m[2:]):6.1f} | {counts[0]:6d} {counts[1]:4d} {counts[2]:5d}"
        )


if __name__ == "__main__":
    main()
