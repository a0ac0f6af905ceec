"""Each GEMM kind of a FastLSTM (B, T, H) owned training step, alone at its real shape and layout
(one thread's half), three ways side by side in one process (issue 19, branch h512c): OpenBLAS
via np.matmul at one thread, torch.mm at one thread (MKL / oneDNN: what "peak" means here), and
tapernn's packed kernel (the operand B packed beforehand; its pack timed apart); arm "pair"
(h256G): OpenBLAS on the half while a second thread runs the other half at once, this thread's
CPU (what sharing L3 and memory with the other half costs). Arms
interleaved, thread CPU per call, medians; GF/s = 2mkn / thread CPU.

Kinds (H4 = 4H, N = T*B rows of the time-batched GEMMs, halves as own_threads._split cuts them):
  proj     x (N, H) @ W.T[:, :H4/2]           (the projection's column half; W (H4, H) C;
                                              rows x[:N/2] @ W.T where N >= H4, as _split cuts)
  dWx      G.T[:H4/2] @ x (N, H)              (a weight gradient's row half; G (N, H4) C)
  dX<r>    G[:r] @ W[:, :H/2] or [:r/2] @ W   (the dX tail's blocks; r = N/64, N/16 .. N*3/4)
  loop     h (B/2, H) @ W.T                   (a forward loop half's step GEMM, B packed)
  rloop    dG (B/2, H4) @ W                   (a reverse loop half's step GEMM)
  cloop    h (B, H) @ W.T[:, :H4/2]           (scan_columns' column half, forward)
  crloop   dG (B, H4) @ W[:, :H/2]            (its reverse)
The packed arm runs its driver on C copies of A (the copy not timed); the loop kinds run T
GEMMs a call (a half's loop), the rest one.

Run: PYTHONPATH=$PWD python tools/gemm_kinds.py --config 32,50,512 [--rounds 15] [--kinds ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (this checkout's tapernn)


def kinds(B: int, T: int, H: int, dtype: str) -> dict:
    """name: (a, b, out, repeat) at the step's layouts (views as the step passes them)."""
    rng = np.random.default_rng(0)
    n, h4 = T * B, 4 * H

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x, w, g = r(n, H), r(h4, H), r(n, h4)
    p, dw = np.empty((n, h4), dtype), np.empty((h4, H), dtype)
    if n >= h4:  # (own_threads._split: rows of the larger side -- (32, 50, 256))
        proj = (x[: n // 2], w.T, p[: n // 2], 1, (x[n // 2 :], w.T, p[n // 2 :]))
    else:
        proj = (x, w.T[:, : h4 // 2], p[:, : h4 // 2], 1, (x, w.T[:, h4 // 2 :], p[:, h4 // 2 :]))
    out = {
        "proj": proj,
        "dWx": (g.T[: h4 // 2], x, dw[: h4 // 2], 1, (g.T[h4 // 2 :], x, dw[h4 // 2 :])),
    }
    rows = [n // 64, n * 3 // 64, n * 12 // 64, n * 48 // 64]
    for m in rows:
        o = np.empty((m, H), dtype)
        if m >= H:  # (rows of a: _split's larger side)
            out[f"dX{m}"] = (g[: m // 2], w, o[: m // 2], 1, (g[m // 2 : m], w, o[m // 2 :]))
        else:
            out[f"dX{m}"] = (
                g[:m],
                w[:, : H // 2],
                o[:, : H // 2],
                1,
                (g[:m], w[:, H // 2 :], o[:, H // 2 :]),
            )
    out["loop"] = (r(B // 2, H), w.T, np.empty((B // 2, h4), dtype), T, None)
    out["rloop"] = (r(B // 2, h4), w, np.empty((B // 2, H), dtype), T, None)
    out["cloop"] = (r(B, H), w.T[:, : h4 // 2], np.empty((B, h4 // 2), dtype), T, None)
    out["crloop"] = (r(B, h4), w[:, : H // 2], np.empty((B, H // 2), dtype), T, None)
    return out


def _pair(a, b, out, other):
    """OpenBLAS on this half while a second thread computes the other half at once (the owned
    split as it runs): this thread's CPU."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(np.matmul, *other[:2], out=other[2])
        c = time.thread_time()
        np.matmul(a, b, out=out)
        t = time.thread_time() - c
        fut.result()
    return t


def measure(name, a, b, out, rep, kernel, args, other=None) -> str:
    """One kind's line: each arm's median thread CPU (ms) and GF/s, the pack's time."""
    import torch

    from tapernn.backends import packed

    m, k = a.shape
    n = b.shape[1]
    flops = 2.0 * m * k * n * rep
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tout = torch.empty(out.shape, dtype=ta.dtype)  # (torch's out= copies a strided one)
    ac = np.ascontiguousarray(a)
    oc = np.empty(out.shape, out.dtype)
    panels = packed.pack_panels(b) if kernel is not None else None
    arms = {
        "openblas": lambda: [np.matmul(a, b, out=out) for _ in range(rep)],
        "torch": lambda: [torch.mm(ta, tb, out=tout) for _ in range(rep)],
        "packed": lambda: [kernel(ac, panels, oc) for _ in range(rep)],
        "pack": lambda: packed.pack_panels(b, out=panels),
    }
    if other is not None:
        arms["pair"] = lambda: _pair(a, b, out, other)
    chosen = [x for x in args.arms if x in arms and x != "pack"]
    chosen += ["pack"] if kernel is not None else []
    times = {x: [] for x in chosen}
    for arm in chosen:
        arms[arm]()  # (warm)
    for rnd in range(args.rounds):
        for arm in chosen if rnd % 2 == 0 else chosen[::-1]:
            c = time.thread_time()
            got = arms[arm]()
            times[arm].append(got if arm == "pair" else time.thread_time() - c)
    if kernel is not None:  # (the packed arm's values: a check, not a timing)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        bound = 1e-4 if args.dtype == "float32" else 1e-12
        err = np.abs(oc - ref).max() / max(1.0, np.abs(ref).max())
        assert err < bound, (name, err)
    med = {x: float(np.median(v)) for x, v in times.items()}
    reps = f"x{rep}" if rep > 1 else ""
    line = f"{name:8s} ({m},{k})x({k},{n}){reps:4s}"
    for arm in chosen:
        if arm == "pack":
            line += f"  pack {med[arm] * 1e3:6.3f} ms"
        else:
            line += f"  {arm} {med[arm] * 1e3:7.3f} ms {flops / med[arm] / 1e9:5.1f} GF/s"
    return line


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="32,50,512")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--kinds", nargs="*")
    ap.add_argument("--arms", nargs="*", default=["openblas", "pair", "torch", "packed"])
    args = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    from tapernn.backends import packed

    B, T, H = (int(v) for v in args.config.split(","))
    torch.set_num_threads(1)
    threadpool_limits(1)
    kernel = None
    if "packed" in args.arms:
        h = packed.handle()
        h.prepare(((np.dtype(args.dtype).str,),))
        if h.error:
            raise SystemExit(h.error)
        kernel = h.kernel
    print(f"load {os.getloadavg()}  isa {packed.isa()}  ({B},{T},{H}) {args.dtype}")
    table = kinds(B, T, H, args.dtype)
    for name, (a, b, out, rep, other) in table.items():
        if not args.kinds or name in args.kinds:
            print(measure(name, a, b, out, rep, kernel, args, other), flush=True)
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
