"""Each time-batched GEMM of a FastLSTM (B, T, H) f32 training step alone, at two threads, several
ways side by side in one process (issue 19, branch hgemm): torch.mm at 2 threads (MKL), NumPy /
OpenBLAS at its own 2 threads, tapernn's owned halves (own_threads.matmul inside an owned call:
OpenBLAS at 1 thread on each of the caller and the worker), and variants of the owned halves:
the other split (columns for rows), the other orientation ((b.T @ a.T).T into out.T), a split
along K (each thread a partial product over half of K, summed after: other bits), and the two
weight gradients as one GEMM over [X | H] (dZ.T @ [X | H]: (4H, N) x (N, D + H)).

Operands as the step holds them: dZ (N, 4H) C-contiguous, X and H (N, D) C, W (4H, D) C (the
projection and the loops multiply by W.T, an F-ordered view; dX = dZ @ W). Arms interleaved,
order reversed every other round; wall per call (the worker's time is in it), medians and mins.

Run: PYTHONPATH=$PWD python tools/hgemm_table.py --configs 32,50,256 [--rounds 15] [--nice]
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

from timeline_step import nice_autogroup

from tapernn import blas, own_threads


def owned(fn):
    """fn marked to run inside one owned call per timing (BLAS at 1 thread, the GEMM halves on
    two threads), as a program call runs its GEMMs."""
    fn.owned = True
    return fn


def timing(fn, reps: int) -> float:
    """Wall seconds a call of fn, over `reps` calls."""

    def calls(_=None):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    return own_threads.run(calls, None) if getattr(fn, "owned", False) else calls()


def halves(parts):
    """Each (fn, args) of `parts` at once, the first on the caller, the second on the worker."""
    (f0, a0), (f1, a1) = parts
    future = own_threads.submit(f1, *a1)
    try:
        f0(*a0)
    finally:
        future.result()


def mm(a, b, out):
    np.matmul(a, b, out=out)


def split_cols(a, b, out):
    h = b.shape[1] - b.shape[1] // 2
    halves([(mm, (a, b[:, :h], out[:, :h])), (mm, (a, b[:, h:], out[:, h:]))])


def split_rows(a, b, out):
    h = a.shape[0] - a.shape[0] // 2
    halves([(mm, (a[:h], b, out[:h])), (mm, (a[h:], b, out[h:]))])


def split_k(a, b, out, tmp):
    h = a.shape[1] - a.shape[1] // 2
    halves([(mm, (a[:, :h], b[:h], out)), (mm, (a[:, h:], b[h:], tmp))])
    np.add(out, tmp, out=out)


def arms_for(a, b, torch):
    """name -> no-argument callable computing a @ b into its own out."""
    m, n = a.shape[0], b.shape[1]
    out = np.empty((m, n), a.dtype)
    tmp = np.empty_like(out)
    outT = np.empty((n, m), a.dtype)
    ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
    arms = {
        "torch.mm 2thr": lambda: torch.mm(ta, tb, out=tout),
        "OpenBLAS 2thr": lambda: _two(lambda: np.matmul(a, b, out=out)),
        "owned halves": owned(lambda: own_threads.matmul(a, b, out)),
        "owned rows": owned(lambda: split_rows(a, b, out)),
        "owned cols": owned(lambda: split_cols(a, b, out)),
        "owned rows, (bT aT)T": owned(lambda: split_cols(b.T, a.T, outT)),
        "owned cols, (bT aT)T": owned(lambda: split_rows(b.T, a.T, outT)),
        "owned K halves (+add)": owned(lambda: split_k(a, b, out, tmp)),
    }
    return arms


def _two(fn):
    with blas.limiter.limit(2):
        fn()


def shapes(B, T, H, rng, dtype):
    N = T * B
    X = rng.standard_normal((N, H)).astype(dtype)
    Hs = rng.standard_normal((N, H)).astype(dtype)
    XH = np.concatenate([X, Hs], axis=1)
    dZ = rng.standard_normal((N, 4 * H)).astype(dtype)
    W = rng.standard_normal((4 * H, H)).astype(dtype)
    return {
        f"proj X W.T ({N},{H})x({H},{4 * H})": (X, W.T),
        f"dW_x dZ.T X ({4 * H},{N})x({N},{H})": (dZ.T, X),
        f"dX dZ W ({N},{4 * H})x({4 * H},{H})": (dZ, W),
        f"dW_x+dW_h one GEMM ({4 * H},{N})x({N},{2 * H})": (dZ.T, XH),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=4, help="calls a timing")
    ap.add_argument("--nice", action="store_true", help="own autogroup at nice -19 (root)")
    args = ap.parse_args()
    if args.nice:
        print("autogroup:", nice_autogroup())
    import torch

    torch.set_num_threads(2)
    own_threads.executor()
    rng = np.random.default_rng(0)
    print("load", os.getloadavg())
    for cfg in args.configs:
        B, T, H = (int(v) for v in cfg.split(","))
        for label, (a, b) in shapes(B, T, H, rng, np.float32).items():
            arms = arms_for(a, b, torch)
            times = {k: [] for k in arms}
            for name, fn in arms.items():  # (warm)
                timing(fn, 1)
            for r in range(args.rounds):
                order = list(arms.items())
                for name, fn in order if r % 2 == 0 else order[::-1]:
                    times[name].append(timing(fn, args.reps))
            gf = 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / 1e9
            print(f"({B},{T},{H}) {label}  {gf:.3f} GFLOP")
            for name, v in times.items():
                med = 1e3 * float(np.median(v))
                print(
                    f"    {name:24s} {med:7.3f} ms (min {1e3 * min(v):7.3f})  {gf / med * 1e3:6.1f} GF/s"
                )
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
