"""A/B of keeping the large per-call arrays (keep.py, issue 19, BENCHMARKS.md "hbig3") in ONE
process, interleaved, with a rest after every step: the FastLSTM training step (Sequencer,
rolled, with dX, default options) compiled with keep.KEEP_MIN_BYTES as it is ("keep") and above
every array ("fresh": np.empty each call, as before), and torch nn.LSTM. Per arm: median wall,
process CPU and system time, minor page faults, run-queue wait (bench_columns.waited).

Run: PYTHONPATH=$PWD python tools/bench_keep.py --configs 64,100,1024 --reps 7
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_columns import torch_step, waited

import tapernn as tn
from tapernn import keep, nn


def tapernn_step(x, g, kept: bool, dtype):
    saved = keep.KEEP_MIN_BYTES
    if not kept:
        keep.KEEP_MIN_BYTES = 1 << 62
    try:
        tn.manual_seed(0)
        seq = nn.Sequencer(nn.FastLSTM(x.shape[2], g.shape[2])).astype(dtype)

        def step():
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, g)

        step()  # (compiled here: the threshold is read at compile time)
        step()  # (numba: the kernels from the second call on)
    finally:
        keep.KEEP_MIN_BYTES = saved
    return step


def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["64,100,1024"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--rest", type=float, default=0.3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--arms", nargs="+", default=["fresh", "keep", "torch"])
    args = ap.parse_args()
    tn.set_backend(args.backend)
    for cfg in args.configs:
        B, T, H = map(int, cfg.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)
        arms = {
            a: torch_step(H, x.astype(np.float32), g.astype(np.float32))
            if a == "torch"
            else tapernn_step(x, g, a == "keep", args.dtype)
            for a in args.arms
        }
        for _ in range(args.warm):
            for f in arms.values():
                f()
                time.sleep(args.rest)
        res = {k: [] for k in arms}
        for _ in range(args.reps):
            for k, f in arms.items():
                (f0, s0), w0 = usage(), waited()
                c, t = time.process_time(), time.perf_counter()
                f()
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                (f1, s1), w1 = usage(), waited()
                res[k].append((wall, cpu, s1 - s0, f1 - f0, w1 - w0))
                time.sleep(args.rest)
        ref = np.median([r[0] for r in res["torch"]]) if "torch" in res else None
        for k, v in res.items():
            v = np.array(v)
            med = np.median(v[:, 0])
            ratio = f" = {med / ref:.3f}x torch" if ref else ""
            print(
                f"{cfg} {args.dtype} {k:6s} wall {1e3 * med:.1f} ms (min {1e3 * v[:, 0].min():.1f})"
                f"{ratio}; CPU {1e3 * np.median(v[:, 1]):.0f} ms, system"
                f" {1e3 * np.median(v[:, 2]):.0f} ms (max {1e3 * v[:, 2].max():.0f});"
                f" faults {np.median(v[:, 3]):.0f}; run-queue wait {1e3 * np.median(v[:, 4]):.0f} ms",
                flush=True,
            )
        print("  walls ms:", {k: [round(1e3 * r[0]) for r in v] for k, v in res.items()})


if __name__ == "__main__":
    main()
