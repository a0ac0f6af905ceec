"""A/B of branch hloop's changes to the owned training step (issue 19): "new" (as built) against
"old" (scan_split.STEP_LOOPS off: each half's loop a Python loop over its step program), both tapernn numba
FastLSTM models with the default options, and torch nn.LSTM f32 -- one process, interleaved
rounds with a rest before each arm, wall and caller-thread / process CPU per step, medians.

Run: PYTHONPATH=$PWD python tools/ab_loop.py --configs 32,50,256 --reps 15
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from ab_common import config_arms, interleaved, training_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapernn import scan_split


def tn_step(B, T, H, dtype, x, g, mode, cell="FastLSTM"):
    def flag():
        scan_split.STEP_LOOPS[0] = mode == "new"

    return training_step(x.astype(dtype), g.astype(dtype), H, flag, cell)


def main(make_step=None):
    """The A/B; `make_step` (default tn_step) builds each arm's step: (step, model) from
    (B, T, H, dtype, x, g, mode, cell), mode "old" or "new" (tools/ab_256.py passes its own)."""
    make_step = make_step or tn_step
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--cell", default="FastLSTM", help="FastLSTM, LSTM or GRU (torch: nn.LSTM)")
    args = ap.parse_args()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        (B, T, H), arms, models = config_arms(
            text, args.dtype, ["old", "new"], make_step, not args.no_torch, args.cell
        )
        for f in arms.values():
            for _ in range(5):
                f()
        a = models["old"].parameters()[0].grad
        same = all(
            np.array_equal(p.grad, q.grad)
            for p, q in zip(models["old"].parameters(), models["new"].parameters())
        )
        print(f"old and new gradients bit-identical: {same} ({a.shape})")
        for k in models["new"].compile_report().loops:
            print("  new:", k.kernel[-60:])
        res = interleaved(arms, args.reps, args.batch)
        base = np.median(res["torch"][0]) if "torch" in res else None
        for k, (w, pcpu, tcpu) in res.items():
            r = f" = {np.median(w) / base:.3f}x torch" if base else ""
            print(
                f"({B},{T},{H}) {args.cell} {args.dtype} {k:6s} wall {np.median(w) * 1e3:7.2f} ms"
                f" (best {min(w) * 1e3:7.2f}), caller CPU {np.median(tcpu) * 1e3:6.2f},"
                f" process CPU {np.median(pcpu) * 1e3:6.2f}{r}"
            )
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
