"""A/B of PlanOptions.gemm_in_slab (issue 19, branch hgemm3; own_room.py): "old" (False: the
projection as OpenBLAS halves) against "new" (True: the packed kernel's halves, the panels in
the loop slab's unwritten bytes), optionally torch nn.LSTM f32 -- one process, interleaved
rounds with a rest before each arm; per step the wall and process CPU (both threads) of the
whole step and of the projection's line alone; old and new gradients compared.

Run: PYTHONPATH=$PWD python tools/ab_slab.py --configs 32,50,256 --reps 15 [--cell LSTM] [--min-depth 256]
[--kinds avx2 avx512] (own_room.KINDS: on an AVX2 machine "new" needs avx2 in it)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import nn, own_room

NAMES = ("np_matmul_room0", "np_matmul_bias", "np_matmul")
SPENT: list = []  # (wall, process CPU) of the projection line in the last step


def timed(fn):
    def call(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            SPENT.append((time.perf_counter() - t, time.process_time() - c))

    return call


def arm(B, T, H, dtype, x, g, mode, cell):
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(getattr(nn, cell)(H, H)).astype(dtype)
    seq.set_plan_options(tn.PlanOptions(gemm_in_slab=mode == "new"))

    def step():
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    for _ in range(5):
        step()
    fwd = seq._runtime.last.training_pair.forward.program.fn
    kw = dict(fwd.__kwdefaults__)
    name = next(
        n
        for n in NAMES
        if n in kw and f"{n}(" in seq._runtime.last.training_pair.forward.program.source
    )
    kw[name] = timed(kw[name])
    fwd.__kwdefaults__ = kw
    return step, seq, name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cell", default="FastLSTM")
    ap.add_argument("--torch", action="store_true")
    ap.add_argument(
        "--min-depth",
        type=int,
        default=None,
        help="own_room.MIN_DEPTH (256: the 256 projection too)",
    )
    ap.add_argument(
        "--kinds",
        nargs="*",
        default=None,
        help="own_room.KINDS (avx2 avx512: the packed projection on AVX2's kernel too)",
    )
    args = ap.parse_args()
    own_room.PAYS[0] = True  # ("new": the packed projection whatever the vendor: own_room.VENDORS)
    if args.kinds is not None:
        own_room.KINDS = set(args.kinds)
    if args.min_depth is not None:
        own_room.MIN_DEPTH = args.min_depth
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)
        arms, models = {}, {}
        for mode in ("old", "new"):
            step, seq, name = arm(B, T, H, args.dtype, x, g, mode, args.cell)
            arms[mode], models[mode] = step, seq
            print(f"  {mode}: projection line {name}")
        if args.torch:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from proto_own import torch_step

            arms["torch"] = torch_step(
                B, T, H, "float32", x.astype(np.float32), g.astype(np.float32)
            )
            for _ in range(3):
                arms["torch"]()
        ran = own_room.RAN[0]
        res = {k: {"step": [], "step cpu": [], "proj": [], "proj cpu": []} for k in arms}
        for r in range(args.reps):
            order = list(arms.items())
            for k, f in order if r % 2 == 0 else order[::-1]:  # (each arm first in half)
                time.sleep(0.05)
                SPENT.clear()
                t, c = time.perf_counter(), time.process_time()
                f()
                res[k]["step"].append(time.perf_counter() - t)
                res[k]["step cpu"].append(time.process_time() - c)
                if SPENT:
                    res[k]["proj"].append(SPENT[0][0])
                    res[k]["proj cpu"].append(SPENT[0][1])
        same = max(
            float(np.abs(p.grad - q.grad).max())
            for p, q in zip(models["old"].parameters(), models["new"].parameters())
        )
        print(
            f"({B},{T},{H}) {args.cell} {args.dtype}: packed projections run {own_room.RAN[0] - ran}"
            f" (of {args.reps} new steps); old vs new gradients max |diff| {same:.3g}"
        )
        for k, r in res.items():
            print(
                f"  {k:5s} "
                + "  ".join(
                    f"{n} {np.median(v) * 1e3:7.3f} (min {min(v) * 1e3:7.3f})"
                    for n, v in r.items()
                    if v
                )
            )
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
