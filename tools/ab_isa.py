"""A/B of the packed kernel's instruction sets and the machinery it gates (issue 19, BENCHMARKS.md
"havx2"): FastLSTM training steps on the numba backend with the packed step GEMMs of each
geometry (packed.GEOMETRY: "avx512" forced on a CPU without it runs 512-bit vectors split in
two by LLVM; "avx2"), or none (OpenBLAS: main's path on an AVX2 CPU), with and without the
batch split / owned threads / step loops it enables -- and torch nn.LSTM f32. One process,
interleaved rounds with a rest before each arm, wall and process CPU per step, medians; each
arm's gradients against the first arm's (max |difference| / max |gradient|: other summation
orders, not bits).

Run: PYTHONPATH=$PWD python tools/ab_isa.py --configs 32,50,256 32,50,512 --reps 15
     ... --arms blas blas-split avx2 avx2-nosplit avx512 (default: all) --dtype float64
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from ab_common import config_arms, interleaved, training_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapernn.backends import packed

# arm -> (packed._avx512[0], packed._avx2[0], PlanOptions keywords)
ARMS = {
    "blas": (False, False, {}),  # main on an AVX2 CPU: OpenBLAS per step, no split
    "blas-split": (False, False, {"batch_split": "on"}),  # + split, owned, OpenBLAS halves
    "avx2-nosplit": (False, True, {"batch_split": "off"}),  # the AVX2 kernel alone
    "avx2": (False, True, {}),  # the AVX2 kernel and what "auto" then enables
    "avx512": (True, False, {}),  # AVX-512's kernel forced (LLVM splits its vectors)
    "avx2-noroom": (False, True, {"gemm_in_slab": False}),  # own_room's projection: OpenBLAS
    "avx2-noloops": (False, True, {"step_loops": False}),  # the halves' Python loops
}
DEFAULT = ["blas", "blas-split", "avx2-nosplit", "avx2", "avx512"]


def tn_step(B, T, H, dtype, x, g, arm, cell="FastLSTM"):
    a512, a2, options = ARMS[arm]

    def flags():
        packed._avx512[0], packed._avx2[0] = a512, a2

    flags()
    return training_step(x.astype(dtype), g.astype(dtype), H, flags, cell, options)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--arms", nargs="+", default=DEFAULT)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--cell", default="FastLSTM")
    args = ap.parse_args()
    print(f"load {os.getloadavg()}; detected: {packed._detect()}")
    for text in args.configs:
        (B, T, H), arms, models = config_arms(
            text, args.dtype, args.arms, tn_step, not args.no_torch, args.cell
        )
        for f in arms.values():
            for _ in range(6):
                f()
        first = args.arms[0]
        for arm, m in models.items():
            diff = max(
                float(np.max(np.abs(p.grad - q.grad))) / max(float(np.max(np.abs(q.grad))), 1e-30)
                for p, q in zip(m.parameters(), models[first].parameters())
            )
            rep = m.compile_report()
            print(f"  {arm}: grads vs {first} {diff:.2e}; threads: {rep.threads[:40]}")
            for k in rep.loops:
                print(f"    {k.kernel[-110:]}")
        res = interleaved(arms, args.reps, args.batch)
        base = np.median(res["torch"][0]) if "torch" in res else None
        cbase = np.median(res["torch"][1]) if "torch" in res else None
        for k, (w, pcpu, _) in res.items():
            r = f" = {np.median(w) / base:.3f}x torch" if base else ""
            rc = f" ({np.median(pcpu) / cbase:.3f}x)" if cbase else ""
            print(
                f"({B},{T},{H}) {args.cell} {args.dtype} {k:12s} wall {np.median(w) * 1e3:7.2f} ms"
                f" (best {min(w) * 1e3:7.2f}){r}, process CPU {np.median(pcpu) * 1e3:7.2f}{rc}"
            )
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
