"""The caller's steps beside a compiling thread, by switch interval (background.WORKER_SWITCH_S,
BENCHMARKS.md "hearly"): one process, a NumPy-planned `Sequencer(FastLSTM(H, H))` f32 training
step (backend "numpy", one BLAS thread) run in rounds while another thread compiles numba
functions without end (each a fresh source, as the background worker compiles kernels), the
interval alternating between the arms every round. Prints per arm the median step's wall, the
caller's CPU and its time blocked (wall less its time on a CPU and queued for one:
/proc/thread-self/schedstat), and the compiles the other thread finished per second.

    PYTHONPATH=$PWD python tools/ab_switch_interval.py --rounds 12 --arms 0.005,0.0005
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from early_calls import sched

import tapernn as tn
from tapernn import nn

SOURCE = """
def f{k}(a, b):
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * b[i] + {k}
    return s
"""


def compiler(stop: threading.Event, done: list[int]) -> None:
    """Compile a fresh numba function after another until `stop`."""
    from numba import njit

    a = np.ones(4)
    k = 0
    while not stop.is_set():
        space: dict = {}
        exec(SOURCE.format(k=k), space)  # noqa: S102 -- a fresh function to compile
        njit(space[f"f{k}"])(a, a)
        done[0] += 1
        k += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="50,32,256", help="T,B,H")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5, help="steps per arm per round")
    ap.add_argument("--arms", default="0.005,0.0005", help="switch intervals, seconds")
    ap.add_argument("--nice", action="store_true", help="its own autogroup at nice -19 (root)")
    a = ap.parse_args()
    if a.nice:
        from timeline_step import nice_autogroup

        print(f"autogroup: {nice_autogroup()}")
    T, B, H = (int(v) for v in a.shape.split(","))
    arms = [float(v) for v in a.arms.split(",")]
    tn.set_backend("numpy")
    tn.set_blas_threads(1)
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.float32)
    x = (np.random.default_rng(0).standard_normal((T, B, H)) * 0.1).astype(np.float32)

    def step() -> None:
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, x)

    for _ in range(3):
        step()
    stop, done = threading.Event(), [0]
    worker = threading.Thread(target=compiler, args=(stop, done), daemon=True)
    worker.start()
    while done[0] < 2:  # (numba imported, its first compiles behind)
        time.sleep(0.05)
    rows: dict[float, list[tuple]] = {v: [] for v in arms}
    rates: dict[float, list[float]] = {v: [] for v in arms}
    before = sys.getswitchinterval()
    try:
        for r in range(a.rounds):
            for v in arms if r % 2 == 0 else arms[::-1]:
                sys.setswitchinterval(v)
                n0, t0 = done[0], time.perf_counter()
                for _ in range(a.steps):
                    s0, w0, c0 = sched(), time.perf_counter(), time.thread_time()
                    step()
                    wall, cpu, s1 = time.perf_counter() - w0, time.thread_time() - c0, sched()
                    queued = s1[1] - s0[1]
                    rows[v].append((wall, cpu, queued, wall - (s1[0] - s0[0]) - queued))
                rates[v].append((done[0] - n0) / (time.perf_counter() - t0))
    finally:
        sys.setswitchinterval(before)
        stop.set()
    print(f"load {os.getloadavg()[0]:.1f}; {a.rounds} rounds x {a.steps} steps, ms (median)")
    for v in arms:
        cols = [statistics.median(c) * 1e3 for c in zip(*rows[v])]
        print(
            f"  interval {v * 1e3:g} ms: wall {cols[0]:.1f}, caller CPU {cols[1]:.1f}, queued "
            f"{cols[2]:.1f}, blocked {cols[3]:.1f}; compiles/s {statistics.median(rates[v]):.1f}"
        )


if __name__ == "__main__":
    main()
