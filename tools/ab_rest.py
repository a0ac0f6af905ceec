"""A/B of branch hrestI's changes around the step GEMMs (issue 19) in one process, interleaved
with rests, round-robin (tools/ab_common.interleaved): the same
FastLSTM training step (numba, owned) as before the branch ("old": own_room's packed projection
on any CPU, packed_kernels.pack_rows one whole row of the weight into a panel column at a
time) and with it ("new": the projection on OpenBLAS's halves unless the CPU is in
own_room.VENDORS, pack_rows in blocks of 16 rows); "pack": only pack_rows' blocks; next to torch
nn.LSTM f32 (--no-torch: without). Each arm its own model (same seed), whose projection site
takes its path at its first call; "old" and "new" differ in the projection's summation order
(the packed kernel vs OpenBLAS: max |diff| printed), "pack" and "new" moved no computed value
(the pack is a copy). Prints per arm: step wall, process CPU, the caller thread's CPU
(medians, minima) and the ratio to the first arm per round.

Run: PYTHONPATH=$PWD python tools/ab_rest.py --configs 32,50,512 --reps 15 [--arms old new pack] [--nice]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from ab_common import config_arms, interleaved, training_step
from numba import njit
from timeline_step import apply_nice, nice_option

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapernn import own_room
from tapernn.backends import packed


@njit(cache=True, nogil=True)
def _pack_rows_whole(w, out):
    """pack_rows before hrestI: each column of a panel written down all K rows at once."""
    n, k = w.shape
    nr = out.shape[2]
    for j in range(out.shape[0]):
        for c in range(nr):
            col = j * nr + c
            for r in range(k):
                out[j, r, c] = w[col, r] if col < n else 0


ARMS = {"old": (True, True), "new": (False, False), "pack": (True, False)}  # (packs, whole rows)
SHIPPED = []


def arm(B, T, H, dtype, x, g, name):
    pays, whole = ARMS[name]
    pk = packed._kernel_module()
    if not SHIPPED:
        SHIPPED.append(pk.pack_rows)

    def before():
        pk.pack_rows = _pack_rows_whole if whole else SHIPPED[0]

    own_room.PAYS[0] = pays or None  # (read at the projection site's first call)
    step, seq = training_step(x, g, H, before)
    for _ in range(3):
        step()
    own_room.PAYS[0] = None
    return step, seq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,512"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=["old", "new"])
    ap.add_argument("--no-torch", action="store_true")
    nice_option(ap)
    args = ap.parse_args()
    apply_nice(args)
    print(f"load {os.getloadavg()}  vendor {own_room.vendor()!r}")
    for text in args.configs:
        _, arms, models = config_arms(text, "float32", args.arms, arm, not args.no_torch)
        res = interleaved(arms, args.reps, args.batch)
        first = args.arms[0]
        for name, (wall, cpu, caller) in res.items():
            ratio = np.median(np.array(wall) / np.array(res[first][0]))
            print(
                f"  {text} {name:6s} wall {np.median(wall) * 1e3:8.2f} (min {min(wall) * 1e3:8.2f})"
                f"  cpu {np.median(cpu) * 1e3:8.2f}  caller {np.median(caller) * 1e3:8.2f}"
                f"  per round / {first} {ratio:.3f}"
            )
        grads = {k: [p.grad.copy() for p in m.parameters()] for k, m in models.items()}
        for name in args.arms[1:]:
            diff = max(float(np.abs(a - b).max()) for a, b in zip(grads[first], grads[name]))
            print(f"  gradients {first} vs {name}: max |diff| {diff:.3g}")
        print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
