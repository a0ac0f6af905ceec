"""A/B in one process: an owned FastLSTM training step on the numba backend with blas_twin on
(the halves' dW / dX GEMMs through own_gemm) and off (OpenBLAS), blocks of steps alternating
(the bits are the same either way: toggling mid-run is safe). Per step: process CPU (both
threads) and wall; medians over the blocks, on / off ratios (issue 19, "hbig").

Run: PYTHONPATH=$PWD python tools/ab_twin.py [--configs 32,50,256] [--dtype float32]
     [--blocks 12] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import tapernn as tn
from tapernn import nn
from tapernn.backends import background, blas_twin


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="32,50,256", help="B,T,H[ ...]")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    tn.set_backend("numba")
    dt = np.dtype(args.dtype)
    for config in args.configs.split():
        b, t, h = (int(v) for v in config.split(","))
        tn.manual_seed(0)
        seq = nn.Sequencer(nn.FastLSTM(h, h)).astype(dt)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((t, b, h)).astype(dt)
        g = rng.standard_normal((t, b, h)).astype(dt)

        def step(seq=seq, x=x, g=g):
            seq.zero_grad_parameters()
            seq.forward(x)
            seq.backward(x, g)

        for _ in range(3):
            step()
        background.wait(300)  # (every kernel compiled, the twin's too)
        for _ in range(3):
            step()
        ran = blas_twin.RAN[0]
        cpu = {True: [], False: []}
        wall = {True: [], False: []}
        for k in range(args.blocks):
            for on in (True, False) if k % 2 == 0 else (False, True):
                blas_twin.ENABLED[0] = on
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(args.steps):
                    step()
                cpu[on].append((time.process_time() - c0) / args.steps * 1e3)
                wall[on].append((time.perf_counter() - w0) / args.steps * 1e3)
        blas_twin.ENABLED[0] = True
        per = (blas_twin.RAN[0] - ran) / (args.blocks * args.steps)
        c_on, c_off = np.median(cpu[True]), np.median(cpu[False])
        w_on, w_off = np.median(wall[True]), np.median(wall[False])
        print(
            f"({b},{t},{h}) {dt.name} load {os.getloadavg()[0]:.1f}: twin GEMMs a step {per:.0f};"
            f" process CPU ms on {c_on:.2f} off {c_off:.2f} = {c_on / c_off:.3f};"
            f" wall ms on {w_on:.2f} off {w_off:.2f} = {w_on / w_off:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
