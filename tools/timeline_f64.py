"""Where the wall time of tapernn's (B, T, H) FastLSTM training step goes, phase by phase
(issue 19, branch hf64c): the forward and backward programs' calls (projection GEMM, bias add,
loops, weight-gradient GEMMs, bias sum, dX) timed by wall clock inside the step (the
programs' bound callables wrapped), the rest of each program and of the module; and each
GEMM phase alone, outside the step, in an owned call (its two halves at once, as in the
step) and through OpenBLAS at two threads: the phases' standalone lower bounds. Default
options unless --options.

Run: PYTHONPATH=$PWD python tools/timeline_f64.py --configs 32,50,256 --dtype float64 --reps 15
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import executor as ex
from tapernn import nn, own_threads
from tapernn.blas import blas_threads

WRAPPED = ("np_matmul", "np_add", "np_add_reduce", "scan_run", "tail_matmul")
ACC: dict[str, list[float]] = {}


def wrap(name, f):
    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            ACC.setdefault(name, [0.0])[0] += time.perf_counter() - t0

    return timed


def instrument(seq):
    tp = seq._runtime.last.training_pair
    for tag, c in (("fwd", tp.forward), ("bwd", tp.last_backward)):
        kw = dict(c.program.fn.__kwdefaults__)
        for name, v in kw.items():
            if callable(v) and name.startswith(WRAPPED):
                kw[name] = wrap(f"{tag} {name}", v)
        c.program.fn.__kwdefaults__ = kw
    real_run = ex.Compiled._run

    def run(self, args):
        t0 = time.perf_counter()
        try:
            return real_run(self, args)
        finally:
            ACC.setdefault("programs", [0.0])[0] += time.perf_counter() - t0

    ex.Compiled._run = run


def best_of(f, reps):
    ts = []
    for _ in range(reps):
        time.sleep(0.01)
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts), min(ts)


def standalone(B, T, H, dtype, reps):
    rng = np.random.default_rng(1)
    n, g = T * B, 4 * H
    x = rng.standard_normal((n, H)).astype(dtype)
    w = rng.standard_normal((H, g)).astype(dtype)
    dz = rng.standard_normal((n, g)).astype(dtype)
    wt = rng.standard_normal((g, H)).astype(dtype)
    out_p, out_w, out_x = np.empty((n, g), dtype), np.empty((g, H), dtype), np.empty((n, H), dtype)
    cases = {
        "projection x @ W": lambda mm: mm(x, w, out=out_p),
        "dW = dZ^T @ x": lambda mm: mm(dz.T, x, out=out_w),
        "dX = dZ @ W^T": lambda mm: mm(dz, wt, out=out_x),
    }
    for name, f in cases.items():
        owned = best_of(lambda f=f: own_threads.run(lambda _: f(own_threads.matmul), None), reps)
        with blas_threads(2):
            two = best_of(lambda f=f: f(np.matmul), reps)
        with blas_threads(1):
            one = best_of(lambda f=f: f(np.matmul), reps)
        fl = 2.0 * n * H * g
        print(
            f"  alone {name:18s} owned {owned[0] * 1e3:6.2f} ms ({fl / owned[0] / 1e9:5.1f} GF/s)"
            f"  BLAS 2 thr {two[0] * 1e3:6.2f} ({fl / two[0] / 1e9:5.1f})"
            f"  BLAS 1 thr {one[0] * 1e3:6.2f} ({fl / one[0] / 1e9:5.1f})"
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="float64")
    args = ap.parse_args()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        tn.set_backend("numba")
        tn.manual_seed(0)
        seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(args.dtype)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)

        def step(seq=seq, x=x, g=g):
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, g)

        for _ in range(5):
            step()
        instrument(seq)
        rows: dict[str, list[float]] = {}
        for _ in range(args.reps):
            time.sleep(0.05)
            ACC.clear()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            rows.setdefault("step system CPU", []).append(r1.ru_stime - r0.ru_stime)
            rows.setdefault("minor faults (x 1e-3 'ms')", []).append(
                (r1.ru_minflt - r0.ru_minflt) * 1e-6
            )
            rows.setdefault("step wall", []).append(wall)
            rows.setdefault("step process CPU", []).append(time.process_time() - c0)
            for k, (v,) in ACC.items():
                rows.setdefault(k, []).append(v)
            inside = sum(v for k, (v,) in ACC.items() if k != "programs")
            rows.setdefault("programs' rest (Python, views)", []).append(
                ACC["programs"][0] - inside
            )
            rows.setdefault("module (step - programs)", []).append(wall - ACC["programs"][0])
        print(f"({B},{T},{H}) {args.dtype}, phases of the step (wall, medians of {args.reps}):")
        for k, v in rows.items():
            print(f"    {k:32s} {np.median(v) * 1e3:8.2f} ms (min {min(v) * 1e3:7.2f})")
        standalone(B, T, H, np.dtype(args.dtype), args.reps)
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
