"""A/B in one process, interleaved (branch hzero, issue 19): the passes over a weight's `.grad`
lent to a loop's packed panels that hzero removed, against the same code doing them as before:
"leave" -- a backward's loop leaving its panels in the `.grad` the backward computes whole after
it (pack_scratch.Lent.left) vs zero-filling them first; "refill" -- a forward after
zero_grad_parameters not filling the panels' `.grad` again after the call (its loop's runner
zeroed it) vs filling it (Packing.release_scratch's `ended`). Blocks of 8 steps alternate the
arms; per step the wall, the caller thread's CPU, the process CPU and the time of the pass's
own call (the loop's zeroing, release_scratch) are printed as medians, with the load.

Run: PYTHONPATH=$PWD python tools/ab_lend_passes.py --configs 32,50,256 [--dtype float64]
     [--which leave|refill] [--blocks 20] [--nice]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timeline_step import apply_nice, nice_option

import tapernn as tn
from tapernn import nn, pack_scratch
from tapernn.nn import packing

ARM = ["new"]
SPANS: dict = {"new": [], "old": []}


def _timed(fn):
    def call(*args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            SPANS[ARM[0]].append(time.perf_counter() - t0)

    return call


def install(which: str) -> None:
    """The old behaviour behind ARM[0] == "old" (before any model is built: the steady plans
    bind these functions)."""
    if which == "leave":
        real = pack_scratch.Lent.unzeroed
        pack_scratch.Lent.unzeroed = lambda self, ended: real(self, ended and ARM[0] == "new")
        pack_scratch.Lent.zero = _timed(pack_scratch.Lent.zero)
        from tapernn import scan_split

        scan_split.zero_fill = _timed(scan_split.zero_fill)
    else:
        real_release = packing.Packing.release_scratch

        def release(program, used, ended=False):
            real_release(program, used, ended and ARM[0] == "new")

        packing.Packing.release_scratch = staticmethod(_timed(release))


def run(B, T, H, dtype, which, blocks) -> None:
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)

    def step():
        if which == "refill":  # (Torch7's order: the forward lends the zeroed .grad)
            seq.zero_grad_parameters()
        seq.forward(x)
        if which == "leave":  # (bench.py's order)
            seq.zero_grad_parameters()
        seq.backward(x, g)

    for _ in range(5):
        step()
    rows: dict = {"new": [], "old": []}
    for b in range(blocks):
        for arm in ("new", "old") if b % 2 else ("old", "new"):
            ARM[0] = arm
            step()
            for _ in range(8):
                w0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
                step()
                rows[arm].append(
                    (time.perf_counter() - w0, time.thread_time() - c0, time.process_time() - p0)
                )
    print(f"({B},{T},{H}) {np.dtype(dtype).name} {which}: load {os.getloadavg()}")
    for arm, r in rows.items():
        a = np.array(r) * 1e3
        span = np.median(SPANS[arm]) * 1e3 if SPANS[arm] else 0.0
        print(
            f"  {arm}: wall {np.median(a[:, 0]):8.3f}  caller cpu {np.median(a[:, 1]):8.3f}"
            f"  process cpu {np.median(a[:, 2]):8.3f} ms (n={len(a)});"
            f" the pass's call {span:.4f} ms a call ({len(SPANS[arm])} calls)"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--which", choices=("leave", "refill"), default="leave")
    ap.add_argument("--blocks", type=int, default=20)
    nice_option(ap)
    args = ap.parse_args()
    apply_nice(args)
    install(args.which)
    for c in args.configs:
        B, T, H = map(int, c.split(","))
        run(B, T, H, np.dtype(args.dtype).type, args.which, args.blocks)


if __name__ == "__main__":
    main()
