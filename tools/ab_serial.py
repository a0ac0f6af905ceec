"""A/B of branch h512b's serial cuts (issue 19) in one process, interleaved with rests: the same
FastLSTM training step (numba, owned) with the caller's serial memory passes as before ("old":
the loop weights packed on the caller alone below scan_columns.MIN_BYTES, the lent panels
zeroed and the tap's copies made on the caller alone, a lent .grad's zero check one whole pass)
or as this branch does them ("new": scan_columns.PACK_MIN_BYTES, own_threads.in_two,
nn/packing._zeros' head first), next to torch nn.LSTM f32. Each arm its own
model (same seed): their gradients must be bit-equal (the cuts move copies and zero-fills
between threads, never a computed value). Prints per arm: step wall, process CPU, the
caller thread's CPU (medians, minima), the ratio to torch.

Run: PYTHONPATH=$PWD python tools/ab_serial.py --configs 32,50,512 --reps 15
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from ab_common import config_arms, interleaved, training_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapernn import own_threads, scan_columns
from tapernn.nn import packing

NEW = (scan_columns.PACK_MIN_BYTES, own_threads.TWO_MIN_BYTES, packing.HEAD)
OLD = (scan_columns.MIN_BYTES, 1 << 62, 0)
# each arm: which of the three cuts it takes (pack halves, in_two, the zero check's head)
ARMS = {"old": (0, 0, 0), "new": (1, 1, 1), "pack": (1, 0, 0), "two": (0, 1, 0), "head": (0, 0, 1)}


def settings(mode: str) -> None:
    (
        scan_columns.PACK_MIN_BYTES,
        own_threads.TWO_MIN_BYTES,
        packing.HEAD,
    ) = (n if on else o for n, o, on in zip(NEW, OLD, ARMS[mode]))


def make(B, T, H, dtype, x, g, mode):
    return training_step(x, g, H, lambda: settings(mode))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,512"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--arms", nargs="+", default=["old", "new"], choices=list(ARMS))
    args = ap.parse_args()
    for text in args.configs:
        print(f"load {os.getloadavg()}", flush=True)
        _, arms, models = config_arms(text, args.dtype, args.arms, make)
        for f in arms.values():
            for _ in range(3):
                f()
        two = own_threads.TWO_CALLS[0]
        res = {k: ([], [], []) for k in arms}
        for r in range(args.reps):  # (the arms' order reversed every other round)
            names = list(arms) if r % 2 == 0 else list(arms)[::-1]
            one = interleaved({k: arms[k] for k in names}, 1, args.batch)
            for k in arms:
                for acc, v in zip(res[k], one[k]):
                    acc.extend(v)
        first = models[args.arms[0]].parameters()
        same = all(
            np.array_equal(p.grad, q.grad)
            for m in args.arms[1:]
            for p, q in zip(first, models[m].parameters())
        )
        torch = np.median(res["torch"][0])
        print(
            f"({text}) {args.dtype}, {args.reps} rounds x {args.batch} steps, gradients"
            f" bit-equal: {same}, in_two calls {own_threads.TWO_CALLS[0] - two}"
        )
        for k, (wall, cpu, thread) in res.items():
            print(
                f"  {k:6s} wall {np.median(wall) * 1e3:8.2f} ms (min {min(wall) * 1e3:8.2f})"
                f"  CPU {np.median(cpu) * 1e3:8.2f}  caller CPU {np.median(thread) * 1e3:8.2f}"
                f" (min {min(thread) * 1e3:8.2f})  x torch {np.median(wall) / torch:.3f}"
            )
        for m in args.arms[1:]:
            per = [o / n for o, n in zip(res[args.arms[0]][0], res[m][0])]
            print(f"  per-round wall {args.arms[0]}/{m} median {np.median(per):.3f}")
        print(f"  load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
