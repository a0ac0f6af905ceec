"""A/B of the packed recurrent GEMM (issue 19, BENCHMARKS.md "hgemm"): one FastLSTM training step
(Sequencer, rolled, f32 unless --dtype) on the numba backend with `PlanOptions(packed_gemm=...)`
on and off, the NumPy backend, the GEMMs alone and torch nn.LSTM, interleaved in one process
(default threads: the pool's), medians and the fastest of the reps.

Run: PYTHONPATH=$PWD python tools/bench_packed.py --configs 32,50,256 32,50,512 --reps 15
     ... --dtype float64 --peer-dtype float32   (issue 19's f64 target: tapernn f64 vs torch f32)
     ... --peer-dtype float32 --only torch      (torch alone in its own process: a cross-check)
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
from tapernn.apps.benchmark.peers import make_gemm_step, make_torch_contenders


def contenders(B, T, H, dtype, layout, need_dx, peer_dtype=None, only=None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    out = {}
    variants = [("numba packed", "numba", True), ("numba OpenBLAS", "numba", False)]
    variants.append(("numpy", "numpy", False))
    if only == "torch":
        variants = []
    for label, backend, packed in variants:
        tn.set_backend(backend)
        tn.manual_seed(0)
        seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
        seq.set_plan_options(tn.PlanOptions(layout=layout, packed_gemm=packed))

        def step(seq=seq, backend=backend):
            tn.set_backend(backend)
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, g, need_grad_input=need_dx)

        out[label] = step
    if only != "torch":
        out["GEMMs alone"] = make_gemm_step(B, T, H, H, dtype, "batch", need_dx)
    peer = np.dtype(peer_dtype or dtype)
    torch = make_torch_contenders(B, T, H, H, peer, x.astype(peer), g.astype(peer), None, need_dx)
    if torch:
        out["torch"] = torch[0].step
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--layout", default="batch")
    ap.add_argument("--peer-dtype", default=None, help="torch's dtype (default: --dtype)")
    ap.add_argument("--only", choices=["torch"], default=None, help="torch alone (a process)")
    ap.add_argument("--no-grad-input", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=0, help="1: one thread everywhere, timed in thread CPU time"
    )
    args = ap.parse_args()
    clock = time.perf_counter
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        tn.set_blas_threads(args.threads)
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads, user_api="blas")
        if args.threads == 1:
            clock = time.thread_time
    print(f"load {os.getloadavg()}, clock {clock.__name__}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        steps = contenders(
            B,
            T,
            H,
            np.dtype(args.dtype),
            args.layout,
            not args.no_grad_input,
            args.peer_dtype,
            args.only,
        )
        for f in steps.values():  # warm-up: compile, the thread choice, the kernels' switch
            for _ in range(8):
                f()
        times = {k: [] for k in steps}
        for _ in range(args.reps):
            for k, f in steps.items():
                t = clock()
                f()
                times[k].append(clock() - t)
        base = np.median(times["torch"]) if "torch" in times else None
        for k, v in times.items():
            ratio = f", {np.median(v) / base:.2f}x torch" if base else ""
            print(
                f"({B},{T},{H}) {args.peer_dtype if k == 'torch' and args.peer_dtype else args.dtype}"
                f" {k:16s} median {np.median(v) * 1e3:8.1f} ms"
                f" (best {min(v) * 1e3:.1f}){ratio}",
                flush=True,
            )
        print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
