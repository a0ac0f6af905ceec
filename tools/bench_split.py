"""A/B of the batch split of rolled loops (issue 19, BENCHMARKS.md "hpar"): one FastLSTM training
step (Sequencer, rolled, batch-major, with dX) on the numba backend with
`PlanOptions(batch_split="auto")` and `"off"`, and torch nn.LSTM, interleaved in one process at
the default threads, wall time, medians and the fastest of the reps. `--torch-alone`: torch only
(run it as a separate process: another library's threads in the process distort it).
`--loops`: the two loops of a step alone (split vs whole, wall; and both halves one after the
other in one thread against the whole loop, thread CPU time).

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


def contenders(B, T, H, dtype, torch_alone, torch_dtype, arms=("auto", "off")):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    out = {}
    if not torch_alone:
        for label, mode in (("numba split", "auto"), ("numba unsplit", "off")):
            if mode not in arms:
                continue
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


def loops(B, T, H, dtype, reps):
    """The loops of a step alone: recorded from the split model's calls, then replayed split
    (two threads, wall) and whole (wall), and both halves one after the other in this thread
    against the whole loop (thread CPU time: what the split costs in CPU)."""
    from concurrent.futures import Future

    from tapernn import own_threads, scan_split
    from tapernn.blas import limiter

    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    calls = []
    real = scan_split.SplitRunner.__call__

    def record(self, *a, out=None):
        calls.append((self, a, out))
        return real(self, *a, out=out)

    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
    seq.set_plan_options(tn.PlanOptions(layout="batch", batch_split="on"))
    scan_split.SplitRunner.__call__ = record
    try:
        for _ in range(6):
            calls.clear()
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, g)
    finally:
        scan_split.SplitRunner.__call__ = real
    if any(r.failed for r, _, _ in calls):
        print("split failed:", [r.failed for r, _, _ in calls])
        return

    class InThisThread:  # the worker's half run at submit, its thread CPU time kept
        spent = 0.0

        def submit(self, f, *a):
            done, t = Future(), time.thread_time()
            done.set_result(f(*a))
            InThisThread.spent += time.thread_time() - t
            return done

    pool = own_threads.executor  # (own_threads.submit's: every owned split's hand-off)
    wall = {"split": [], "whole": []}
    cpu = {"whole": [], "both halves": [], "worker's half": []}
    with limiter.limit(2):
        for _ in range(reps):
            for k, times in wall.items():
                t = time.perf_counter()
                for r, a, o in calls:
                    real(r, *a, out=o) if k == "split" else r.full(*a, out=o)
                times.append(time.perf_counter() - t)
            t = time.thread_time()
            for r, a, o in calls:
                r.full(*a, out=o)
            cpu["whole"].append(time.thread_time() - t)
            own_threads.executor = InThisThread
            InThisThread.spent, t = 0.0, time.thread_time()
            try:
                for r, a, o in calls:
                    real(r, *a, out=o)
            finally:
                own_threads.executor = pool
            cpu["both halves"].append(time.thread_time() - t)
            cpu["worker's half"].append(InThisThread.spent)
    for k, v in wall.items():
        print(
            f"({B},{T},{H}) {dtype} loops {k:14s} wall median {np.median(v) * 1e3:8.2f} ms"
            f" (best {min(v) * 1e3:.2f})"
        )
    for k, v in cpu.items():
        print(
            f"({B},{T},{H}) {dtype} loops one thread {k:14s} thread CPU median"
            f" {np.median(v) * 1e3:8.2f} ms (best {min(v) * 1e3:.2f})"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--torch-dtype", default="float32")
    ap.add_argument("--torch-alone", action="store_true")
    ap.add_argument("--loops", action="store_true", help="the loops alone (see loops())")
    ap.add_argument(
        "--arms", nargs="+", default=["auto", "off"], help="batch_split modes timed (auto, off)"
    )
    ap.add_argument(
        "--tn-threads", type=int, default=0, help="tn.set_blas_threads(n) (0: 'auto', measured)"
    )
    args = ap.parse_args()
    if args.tn_threads:
        tn.set_blas_threads(args.tn_threads)
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        if args.loops:
            loops(B, T, H, np.dtype(args.dtype), args.reps)
            print(f"load {os.getloadavg()}")
            continue
        steps = contenders(
            B, T, H, np.dtype(args.dtype), args.torch_alone, args.torch_dtype, args.arms
        )
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
