"""Thread CPU of the translated step loops alone (each half's numba call, timed on the thread
that runs it), old (PlanOptions.step_direct=False) vs new (the default), interleaved in one
process: the loops' elementwise work without the time-batched GEMMs' noise (branch hfuse).

Run: PYTHONPATH=$PWD python tools/parts_fuse.py --configs 32,50,256 --reps 15 [--cell GRU]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import nn
from tapernn.backends import step_loop

_lock = threading.Lock()
SPENT: dict = {}  # (arm, loop direction) -> [thread CPU s of each half call]
ARM = ["old"]
_call = step_loop.StepLoop.__call__


def _timed(self, *args):
    t = time.thread_time()
    out = _call(self, *args)
    with _lock:
        SPENT.setdefault((ARM[0], "reverse" if self.reverse else "forward"), []).append(
            time.thread_time() - t
        )
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cell", default="FastLSTM")
    args = ap.parse_args()
    step_loop.StepLoop.__call__ = _timed
    tn.set_backend("numba")
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)
        models = {}
        for arm in ("old", "new"):
            tn.manual_seed(0)
            m = nn.Sequencer(getattr(nn, args.cell)(H, H)).astype(args.dtype)
            m.set_plan_options(tn.PlanOptions(step_direct=arm == "new"))
            models[arm] = m

        def step(arm, models=models, x=x, g=g):
            ARM[0] = arm
            m = models[arm]
            m.forward(x)
            m.zero_grad_parameters()
            m.backward(x, g)

        for _ in range(4):
            for arm in models:
                step(arm)
        SPENT.clear()
        for _ in range(args.reps):
            for arm in models:
                time.sleep(0.05)
                step(arm)
        for (arm, d), v in sorted(SPENT.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            v = np.array(v) * 1e3
            print(
                f"({B},{T},{H}) {args.cell} {args.dtype} {d:8s} {arm}: half-loop thread CPU"
                f" median {np.median(v):.3f} ms, min {v.min():.3f} ({len(v)} calls)"
            )
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
