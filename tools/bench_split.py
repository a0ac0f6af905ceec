"""A/B of the batch split of rolled loops (issue 19, BENCHMARKS.md "hpar"): one FastLSTM training
step (Sequencer, rolled, batch-major, with dX) on the numba backend with
`PlanOptions(batch_split="auto")` and `"off"`, and torch nn.LSTM, interleaved in one process at
the default threads, wall time, medians and the fastest of the reps. `--torch-alone`: torch only
(run it as a separate process: another library's threads in the process distort it).
`--loops`: also time the two loops alone (split vs not), as recorded from the steps.

Run: PYTHONPATH=$PWD python tools/bench_split.py --configs 32,50,256 32,50,512 --reps 15
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
from tapernn import nn
from tapernn.apps.benchmark.peers import make_torch_contenders


def contenders(B, T, H, dtype, torch_alone, torch_dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    out = {}
    if not torch_alone:
        for label, mode in (("numba split", "auto"), ("numba unsplit", "off")):
            tn.set_backend("numba")
            tn.manual_seed(0)
            seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
            seq.set_plan_options(tn.PlanOptions(layout="batch", batch_split=mode))

            def step(seq=seq):
                tn.set_backend("numba")
                seq.forward(x)
                seq.zero_grad_parameters()
                seq.backward(x, g)

            out[label] = step
    xt, gt = x.astype(torch_dtype), g.astype(torch_dtype)
    torch = make_torch_contenders(B, T, H, H, np.dtype(torch_dtype), xt, gt, None, True)
    if torch:
        out["torch"] = torch[0].step
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--torch-dtype", default="float32")
    ap.add_argument("--torch-alone", action="store_true")
    args = ap.parse_args()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        steps = contenders(B, T, H, np.dtype(args.dtype), args.torch_alone, args.torch_dtype)
        for f in steps.values():  # warm-up: compile, the thread choice, the kernels' switch
            for _ in range(8):
                f()
        times = {k: [] for k in steps}
        cpu = {k: [] for k in steps}
        for _ in range(args.reps):
            for k, f in steps.items():
                c, t = time.process_time(), time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
                cpu[k].append(time.process_time() - c)
        base = np.median(times["torch"]) if "torch" in times else None
        for k, v in times.items():
            ratio = f", {np.median(v) / base:.2f}x torch" if base else ""
            print(
                f"({B},{T},{H}) {args.dtype} {k:14s} median {np.median(v) * 1e3:8.1f} ms"
                f" (best {min(v) * 1e3:.1f}, process CPU {np.median(cpu[k]) * 1e3:.1f}){ratio}",
                flush=True,
            )
        print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
