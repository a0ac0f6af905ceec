"""A/B of the column split of large packed step GEMMs (scan_columns.py, issue 19, BENCHMARKS.md
"hbig"), in ONE process, interleaved, with a rest after every step (torch's OpenMP pool spins a
while after its calls): the FastLSTM training step (Sequencer, rolled, with dX, numba, default
options: owned calls) compiled with the column split's rule as it is ("default") and with it off
(`scan_columns.MIN_BYTES` above every weight at compile time: the batch halves, "rows"), and
torch nn.LSTM. Per arm: median wall, process CPU, run-queue wait of the process's threads
(/proc/self/task/*/schedstat) and the median over the calls that waited < 5 % of their wall.

Run: PYTHONPATH=$PWD python tools/bench_columns.py --configs 64,100,1024 --reps 5
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
from tapernn import nn, scan_columns


def waited() -> float:
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except OSError:
            pass
    return total * 1e-9


def tapernn_step(B, T, H, x, g, columns: bool):
    saved = scan_columns.MIN_BYTES, scan_columns._l3[0]
    if not columns:
        scan_columns.MIN_BYTES = 1 << 62
    else:  # (the column split whatever this CPU's L3: scan_columns.min_bytes)
        scan_columns._l3[0] = 0
    try:
        tn.manual_seed(0)
        seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.float32)

        def step():
            seq.forward(x)
            seq.backward(x, g)

        step()  # (compiled here: the rule is read at compile time)
    finally:
        scan_columns.MIN_BYTES, scan_columns._l3[0] = saved
    return step, seq


def torch_step(H, x, g):
    import torch

    lstm = torch.nn.LSTM(H, H)
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(g)

    def step():
        lstm.zero_grad(set_to_none=True)
        xt.grad = None
        out, _ = lstm(xt)
        out.backward(gt)

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["64,100,1024"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--rest", type=float, default=0.3)
    ap.add_argument("--arms", nargs="+", default=["rows", "columns", "torch"])
    args = ap.parse_args()
    tn.set_backend("numba")
    for cfg in args.configs:
        B, T, H = map(int, cfg.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(np.float32)
        g = rng.standard_normal((T, B, H)).astype(np.float32)
        arms, notes = {}, {}
        for arm in args.arms:
            if arm == "torch":
                arms[arm] = torch_step(H, x, g)
            else:
                arms[arm], seq = tapernn_step(B, T, H, x, g, arm == "columns")
                notes[arm] = [loop.kernel[-150:] for loop in seq.compile_report().loops]
        for arm, n in notes.items():
            print(f"  {arm}: {n[0]}")
        for _ in range(args.warm):
            for f in arms.values():
                f()
                time.sleep(args.rest)
        res = {k: [] for k in arms}
        for _ in range(args.reps):
            for k, f in arms.items():
                w0, c, t = waited(), time.process_time(), time.perf_counter()
                f()
                res[k].append((time.perf_counter() - t, time.process_time() - c, waited() - w0))
                time.sleep(args.rest)
        ref = np.median([r[0] for r in res["torch"]]) if "torch" in res else None
        for k, v in res.items():
            v = np.array(v)
            quiet = v[v[:, 2] < 0.05 * v[:, 0]]
            med = np.median(v[:, 0])
            ratio = f" = {med / ref:.2f}x torch" if ref else ""
            qmed = f"{1e3 * np.median(quiet[:, 0]):.1f}" if len(quiet) else "-"
            print(
                f"{cfg} {k:8s} wall {1e3 * med:.1f} ms (min {1e3 * v[:, 0].min():.1f}){ratio};"
                f" CPU {1e3 * np.median(v[:, 1]):.0f} ms; run-queue wait"
                f" {1e3 * np.median(v[:, 2]):.0f} ms; quiet calls {len(quiet)}: {qmed}",
                flush=True,
            )
        print("  walls ms:", {k: [round(1e3 * r[0]) for r in v] for k, v in res.items()})


if __name__ == "__main__":
    main()
