"""A/B of the caller's spinning join (own_threads.JOIN_SPIN_S, branch h256G, issue 19) in one
process: the same FastLSTM training step (numba, owned), arm "block" with JOIN_SPIN_S = 0 (the
caller blocks on the worker's future at every join: the default) and arm "spin" (it spins up
to --spin seconds, default 2 ms, without the GIL first), interleaved with rests and torch nn.LSTM
f32 (--no-torch: without), the order reversed every other round. Each arm its own model (same
seed): their gradients must be bit-equal (where the caller waits changes no value). Prints
per arm the step's wall, process CPU and caller thread CPU (medians, minima), the per-round
wall ratio spin / block, and the joins that found the half ended (after a spin) or blocked.

Run: PYTHONPATH=$PWD python tools/ab_spin.py --configs 32,50,256 --reps 21
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from ab_common import config_arms, interleaved, training_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapernn import own_threads
from tapernn.backends import wait_for_kernels

SPIN_S = [2e-3]
JOINS: dict = {}


def make(B, T, H, dtype, x, g, name):
    def before():
        own_threads.JOIN_SPIN_S = 0.0 if name == "block" else SPIN_S[0]
        JOINS[name] = JOINS.get(name, np.zeros(2)) - own_threads.JOINS

    step, model = training_step(x, g, H, before)

    def counted():
        step()
        JOINS[name] += own_threads.JOINS

    return counted, model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--spin", type=float, default=2e-3, help="arm spin's JOIN_SPIN_S")
    args = ap.parse_args()
    SPIN_S[0] = args.spin
    for text in args.configs:
        _, arms, models = config_arms(text, "float32", ["block", "spin"], make, not args.no_torch)
        for f in arms.values():
            f()
        wait_for_kernels()
        for f in arms.values():
            f()
        JOINS.clear()
        load = os.getloadavg()
        res = interleaved(arms, args.reps, args.batch)
        grads = [[p.grad.copy() for p in m.parameters()] for m in models.values()]
        same = all(np.array_equal(a, b) for a, b in zip(*grads))
        print(
            f"({text}) float32, load {load[0]:.2f} -> {os.getloadavg()[0]:.2f}, gradients bit-equal: {same}"
        )
        for k, (wall, cpu, tcpu) in res.items():
            print(
                f"  {k:6s} wall {np.median(wall) * 1e3:8.2f} ms (min {min(wall) * 1e3:7.2f})"
                f"  process CPU {np.median(cpu) * 1e3:8.2f}  caller CPU {np.median(tcpu) * 1e3:8.2f}"
            )
        ratio = np.array(res["spin"][0]) / np.array(res["block"][0])
        print(f"  per round spin / block: median {np.median(ratio):.3f}")
        if "torch" in res:
            for k in ("block", "spin"):
                r = np.array(res[k][0]) / np.array(res["torch"][0])
                print(f"  per round {k} / torch: median {np.median(r):.3f}")
        for k, (ended, blocked) in JOINS.items():
            print(
                f"  {k}: joins a step ended at once or after a spin {ended / args.reps / args.batch:.1f}, blocked {blocked / args.reps / args.batch:.1f}"
            )


if __name__ == "__main__":
    main()
