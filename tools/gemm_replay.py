"""Why do the time-batched GEMMs run slower inside the owned step than alone? (issue 19, branch
hgemm3). Each split GEMM of one owned FastLSTM step (own_threads._split) is timed as it runs
(wall of the call, each half's wall / thread CPU / minor page faults, the worker's start delay),
then run again at once on the same operands into the same output (the same values: same bits)
with hot caches, then again after a 64 MiB cache flush; and the plain GEMM (no bias / sum) alone at two
OpenBLAS threads. The difference in-step - hot replay is
what the step's state costs (cold caches, page faults, wake-up); hot replay vs cold replay
separates the cache part.

Run: PYTHONPATH=$PWD python tools/gemm_replay.py --configs 32,50,256 --reps 20
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
from tapernn import nn, own_threads

_now = time.perf_counter
REC: dict = {}
ON = [False]
FLUSH = np.ones(16 << 20, np.float32)  # 64 MiB


def _faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def instrument():
    real = own_threads._split

    def split(a, b, out, half, _real=real):
        if not ON[0]:
            return _real(a, b, out, half)
        key = (
            f"({a.shape[0]},{a.shape[1]})x({b.shape[0]},{b.shape[1]})"
            + ("T" if a.strides[0] < a.strides[1] else "")
            + ("T" if b.strides[0] < b.strides[1] else "")
            + f" {getattr(half, '__name__', '?')}"
        )
        row = {}
        ON[0] = False
        try:
            r = out
            for how in ("step", "hot", "cold"):
                if how == "cold":
                    np.add(FLUSH, 1.0, out=FLUSH)  # (a 64 MiB pass evicts L2 and L3)
                halves = {}

                def timed_half(*args, halves=halves):
                    t0, c0, f0 = _now(), time.thread_time(), _faults()
                    try:
                        return half(*args)
                    finally:
                        halves[args[-1]] = (t0, _now(), time.thread_time() - c0, _faults() - f0)

                t_call = _now()
                r2 = _real(a, b, r, timed_half)
                t_end = _now()
                if r2 is None:
                    return None
                r = r2
                h0, h1 = halves[0], halves[1]
                row[how] = t_end - t_call
                if how == "cold":  # (the plain GEMM alone at two OpenBLAS threads, hot)
                    from tapernn.blas import limiter

                    pools = limiter.pools()
                    for set_, _ in pools:
                        set_(2)
                    np.matmul(a, b, out=r)
                    t = _now()
                    np.matmul(a, b, out=r)
                    row["blas2 plain"] = _now() - t
                    for set_, _ in pools:
                        set_(1)
                    _real(a, b, r, half)  # (the bits of the step's own arithmetic back)
                row[how + " C cpu"] = h0[2]
                row[how + " W cpu"] = h1[2]
                if how == "step":
                    row["W late"] = h1[0] - h0[0]
                    row["join"] = t_end - max(h0[1], h1[1])
                    row["faults"] = h0[3] + h1[3]
        finally:
            ON[0] = True
        REC.setdefault(key, []).append(row)
        return r

    own_threads._split = split


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cell", default="FastLSTM")
    args = ap.parse_args()
    instrument()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        tn.set_backend("numba")
        tn.manual_seed(0)
        seq = nn.Sequencer(getattr(nn, args.cell)(H, H)).astype(args.dtype)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)
        for _ in range(5):
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, g)
        REC.clear()
        ON[0] = True
        for _ in range(args.reps):
            time.sleep(0.03)
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, g)
        ON[0] = False
        print(f"({B},{T},{H}) {args.dtype} {args.cell}: medians over {args.reps} steps, ms")
        cols = list(next(iter(REC.values()))[0])
        print(f"  {'GEMM':40s}" + "".join(f"{c[:11]:>12s}" for c in cols))
        for key, rows in REC.items():
            med = {c: np.median([r[c] for r in rows]) for c in rows[0]}
            mins = {c: np.min([r[c] for r in rows]) for c in rows[0]}
            print(
                f"  {key[:40]:40s}"
                + "".join(f"{med[c] * (1 if c == 'faults' else 1e3):12.3f}" for c in cols)
            )
            print(f"  {'   (min)':40s}" + "".join(f"{mins[c] * 1e3:12.3f}" for c in cols))
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
