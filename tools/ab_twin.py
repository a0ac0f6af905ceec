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
from tapernn import nn, own_threads
from tapernn.backends import background, blas_twin

HALVES: dict = {}  # (on, m, k, n) -> [thread CPU s of each own_threads._mm call]


def instrument() -> None:
    """Time each GEMM half (own_threads._mm: matmul_sum's; _mm_half: matmul's; thread CPU,
    either thread)."""

    def timed(real):
        def mm(a, b, out, *rest):
            t0 = time.thread_time()
            real(a, b, out, *rest)
            key = (blas_twin.ENABLED[0], *a.shape, b.shape[1])
            HALVES.setdefault(key, []).append(time.thread_time() - t0)

        return mm

    own_threads._mm = timed(own_threads._mm)
    own_threads._mm_half = timed(own_threads._mm_half)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="32,50,256", help="B,T,H[ ...]")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    tn.set_backend("numba")
    instrument()
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
        HALVES.clear()
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
        for m, k, n in sorted({key[1:] for key in HALVES}):
            on, off = (np.median(HALVES.get((o, m, k, n), [np.nan])) for o in (True, False))
            fl = 2.0 * m * k * n / 1e9
            print(
                f"  half ({m},{k},{n}): thread CPU ms on {on * 1e3:.3f} ({fl / on:.0f} GF/s)"
                f" off {off * 1e3:.3f} ({fl / off:.0f} GF/s) = {on / off:.3f}"
            )


if __name__ == "__main__":
    main()
