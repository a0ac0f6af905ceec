"""A/B in one process: an owned FastLSTM training step on the numba backend with blas_twin on
(the halves' dW / dX GEMMs and the input projection's bias GEMM through own_gemm), "plain" (on
but the projection through OpenBLAS: blas_twin.run_bias declining) and off (OpenBLAS), blocks of
steps rotating (the bits are the same either way: toggling mid-run is safe). Per step: process
CPU (both threads) and wall; medians over the blocks, ratios to off (issue 19, "hbig", "hnblk").

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

HALVES: dict = {}  # (arm, m, k, n) -> [thread CPU s of each own_threads._mm call]
ARM = ["on"]  # (the arm running: "on", "plain", "off")
ARMS = ("on", "plain", "off")


def instrument() -> None:
    """Time each GEMM half (own_threads._mm: matmul_sum's; _mm_half: matmul's; _mm_bias: the
    projection's, keyed with a "+b"; thread CPU, either thread); "plain" makes run_bias decline."""

    def timed(real, tag=""):
        def mm(a, b, out, *rest):
            t0 = time.thread_time()
            real(a, b, out, *rest)
            key = (ARM[0], *a.shape, f"{b.shape[1]}{tag}")
            HALVES.setdefault(key, []).append(time.thread_time() - t0)

        return mm

    own_threads._mm = timed(own_threads._mm)
    own_threads._mm_half = timed(own_threads._mm_half)
    own_threads._mm_bias = timed(own_threads._mm_bias, "+b")
    real_bias = blas_twin.run_bias
    blas_twin.run_bias = lambda *args: ARM[0] == "on" and real_bias(*args)


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
        cpu: dict = {arm: [] for arm in ARMS}
        wall: dict = {arm: [] for arm in ARMS}
        for k in range(args.blocks):
            for j in range(len(ARMS)):  # (each arm first, second and third in turn)
                arm = ARMS[(j + k) % len(ARMS)]
                ARM[0] = arm
                blas_twin.ENABLED[0] = arm != "off"
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(args.steps):
                    step()
                cpu[arm].append((time.process_time() - c0) / args.steps * 1e3)
                wall[arm].append((time.perf_counter() - w0) / args.steps * 1e3)
        ARM[0] = "on"
        blas_twin.ENABLED[0] = True
        per = (blas_twin.RAN[0] - ran) / (args.blocks * args.steps * 2)
        c = {arm: np.median(v) for arm, v in cpu.items()}
        w = {arm: np.median(v) for arm, v in wall.items()}
        print(
            f"({b},{t},{h}) {dt.name} load {os.getloadavg()[0]:.1f}: twin GEMMs a step {per:.1f}"
            f" (on, plain); process CPU ms on {c['on']:.2f} plain {c['plain']:.2f} off"
            f" {c['off']:.2f}: on/off {c['on'] / c['off']:.3f}, plain/off"
            f" {c['plain'] / c['off']:.3f}, on/plain {c['on'] / c['plain']:.3f}; wall on/off"
            f" {w['on'] / w['off']:.3f}, plain/off {w['plain'] / w['off']:.3f}",
            flush=True,
        )
        for m, k, n in sorted({key[1:] for key in HALVES}, key=str):
            ms = {arm: np.median(HALVES.get((arm, m, k, n), [np.nan])) for arm in ARMS}
            fl = 2.0 * m * k * int(n.removesuffix("+b")) / 1e9
            print(
                f"  half ({m},{k},{n}): thread CPU ms "
                + ", ".join(f"{arm} {v * 1e3:.3f} ({fl / v:.0f} GF/s)" for arm, v in ms.items())
                + f"; on/off {ms['on'] / ms['off']:.3f}"
            )


if __name__ == "__main__":
    main()
