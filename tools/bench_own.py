"""A/B of owned program calls (issue 19, BENCHMARKS.md "hown"): one FastLSTM training step
(Sequencer, rolled, with dX) on the numba backend with `PlanOptions(own_threads="auto")` (the
default: BLAS at one thread, the loops' batch halves and the time-batched GEMMs' halves on two
threads) and `own_threads="off", batch_split="off"` (before: blas_tuning's thread choice),
the NumPy backend, and torch nn.LSTM f32, interleaved in one process at the default threads.
Each rep times a batch of calls (wall and process CPU per call) and reads the other processes'
CPU during it from /proc/stat: "quiet" medians keep only batches during which the rest of the
machine used less than --others cores. `--torch-alone`: torch only (a separate process).

Run: PYTHONPATH=$PWD python tools/bench_own.py --configs 32,50,256 32,50,512 --reps 15
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proto_own import timed_batch, timed_call, torch_step

import tapernn as tn
from tapernn import nn

ARMS = {
    "numba owned": ("numba", {}),
    "numba unowned": ("numba", {"own_threads": "off", "batch_split": "off"}),
    "numpy": ("numpy", {}),
    # (blas_tuning times 1 vs 2 threads during the warm-up: under load it picks 1)
    "numba unowned 2thr": ("numba", {"own_threads": "off", "batch_split": "off", "threads": 2}),
    "numpy 2thr": ("numpy", {"threads": 2}),
}


def contenders(B, T, H, dtype, arms, torch_alone, with_torch=True):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    out = {}
    if not torch_alone:
        for label in arms:
            backend, options = ARMS[label]
            tn.set_backend(backend)
            tn.manual_seed(0)
            seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
            options = dict(options)
            threads = options.pop("threads", "auto")
            if options:
                seq.set_plan_options(tn.PlanOptions(**options))

            def step(seq=seq, backend=backend, threads=threads):
                tn.set_backend(backend)
                tn.set_blas_threads(threads)
                seq.forward(x)
                seq.zero_grad_parameters()
                seq.backward(x, g)
                tn.set_blas_threads("auto")

            out[label] = (step, seq)
    if with_torch:
        t = torch_step(B, T, H, "float32", x.astype(np.float32), g.astype(np.float32))
        out["torch"] = (t, None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=6, help="calls per timed batch")
    ap.add_argument("--others", type=float, default=0.2)
    ap.add_argument(
        "--waits",
        type=float,
        default=0.0,
        help="time calls one by one; quiet: threads waited on a run queue < this share of wall",
    )
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--torch-alone", action="store_true")
    ap.add_argument("--no-torch", action="store_true", help="no torch in this process")
    ap.add_argument(
        "--rest", type=float, default=0.02, help="seconds between calls (pools fall asleep)"
    )
    args = ap.parse_args()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        steps = contenders(
            B, T, H, np.dtype(args.dtype), args.arms, args.torch_alone, not args.no_torch
        )
        for f, _ in steps.values():  # warm-up: compile, kernels switch, thread choice
            for _ in range(10):
                f()
        for k, (_, seq) in steps.items():
            if seq is not None:
                rep = seq.compile_report()
                print(f"  {k}: threads: {rep.threads or '-'}")
        wall = {k: [] for k in steps}
        cpu = {k: [] for k in steps}
        quiet = {k: [] for k in steps}
        for _ in range(args.reps):
            for k, (f, _) in steps.items():
                time.sleep(args.rest)
                if args.waits:
                    w, c, waited = timed_call(f)
                    ok = waited < args.waits * w
                else:
                    w, c, o = timed_batch(f, args.batch)
                    ok = o < args.others
                wall[k].append(w)
                cpu[k].append(c)
                if ok:
                    quiet[k].append(w)
        base = np.median(wall["torch"]) if "torch" in wall else np.median(wall[args.arms[-1]])
        ref = "torch" if "torch" in wall else args.arms[-1]
        qbase = np.median(quiet[ref]) if quiet[ref] else None
        for k in steps:
            q = quiet[k]
            qt = (
                f"; quiet {len(q)}/{args.reps}: {np.median(q) * 1e3:.1f} ms"
                + (f" = {np.median(q) / qbase:.2f}x" if qbase else "")
                if q
                else "; no quiet batch"
            )
            print(
                f"({B},{T},{H}) {args.dtype} {k:14s} median {np.median(wall[k]) * 1e3:7.3f} ms"
                f" (best {min(wall[k]) * 1e3:.3f}, process CPU {np.median(cpu[k]) * 1e3:.3f})"
                f" = {np.median(wall[k]) / base:.2f}x {ref}{qt}",
                flush=True,
            )
        print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
