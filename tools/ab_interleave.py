"""A/B of branch h256L's step loops compiled with LLVM's vectoriser interleaving two vectors
(backends/numba_interleave.py, issue 19) in one process, interleaved with rests, the arms' order
reversed every other round: the same FastLSTM (or --cell) training step (numba, owned threads)
with its loops' halves translated at numba_interleave.COUNT 0 ("old": LLVM's cost model, main's
machine code) and 2 ("new"), next to torch nn.LSTM f32 (--no-torch: ratios to "old"). The two
arms' gradients must be bit-equal (interleaving reorders instructions, never a value). Prints
per arm: step wall, process CPU, and each loop direction's half calls' thread CPU (medians over
the halves of every timed step: what the change is about, the least noisy number here).

Run: PYTHONPATH=$PWD python tools/ab_interleave.py --configs 32,50,256 --reps 15
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from ab_common import config_arms, interleaved, training_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapernn.backends import background, numba_interleave, step_loop

COUNTS = {"old": 0, "new": 2}
MODE = ["old"]
HALVES: dict = {}  # (arm, "forward" | "reverse") -> thread CPU seconds of each half call
_lock = threading.Lock()
_real = step_loop._Bound.__call__


def _timed(self):
    t = time.thread_time()
    try:
        return _real(self)
    finally:
        key = (MODE[0], "reverse" if self.loop.reverse else "forward")
        with _lock:
            HALVES.setdefault(key, []).append(time.thread_time() - t)


step_loop._Bound.__call__ = _timed


def make(B, T, H, dtype, x, g, mode, cell):
    def before():
        MODE[0] = mode
        numba_interleave.COUNT[0] = COUNTS[mode]  # (read when the loops are translated)

    return training_step(x, g, H, before, cell)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cell", default="FastLSTM")
    ap.add_argument("--no-torch", action="store_true", help="without torch nn.LSTM's arm")
    args = ap.parse_args()
    names = list(COUNTS)
    for text in args.configs:
        print(f"load {os.getloadavg()}", flush=True)
        _, arms, models = config_arms(text, args.dtype, names, make, not args.no_torch, args.cell)
        for _ in range(2):
            for f in arms.values():
                for _ in range(3):
                    f()
            background.wait(600)  # (the step loops compiled: from here on numba's halves)
        HALVES.clear()
        res = {k: ([], [], []) for k in arms}
        for r in range(args.reps):
            order = list(arms) if r % 2 == 0 else list(arms)[::-1]
            one = interleaved({k: arms[k] for k in order}, 1, args.batch)
            for k in arms:
                for acc, v in zip(res[k], one[k]):
                    acc.extend(v)
        same = all(
            np.array_equal(p.grad, q.grad)
            for p, q in zip(models["old"].parameters(), models["new"].parameters())
        )
        base = "torch" if "torch" in res else "old"
        ref = np.median(res[base][0])
        print(f"({text}) {args.dtype} {args.cell}, {args.reps} rounds x {args.batch} steps,")
        print(f"  gradients bit-equal: {same}")
        for k, (wall, cpu, _) in res.items():
            print(
                f"  {k:6s} wall {np.median(wall) * 1e3:8.2f} ms (min {min(wall) * 1e3:8.2f})"
                f"  process CPU {np.median(cpu) * 1e3:8.2f}  x {base} {np.median(wall) / ref:.3f}"
            )
        for way in ("forward", "reverse"):
            each = "  ".join(
                f"{m} {np.median(HALVES.get((m, way), [0])) * 1e3:.3f}"
                f" (n {len(HALVES.get((m, way), []))})"
                for m in names
            )
            print(f"  {way} loop half, thread CPU ms (median): {each}")
        per = [o / n for o, n in zip(res["old"][0], res["new"][0])]
        print(f"  per-round wall old/new median {np.median(per):.3f}")
        print(f"  load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
