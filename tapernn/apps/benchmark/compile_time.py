"""`tapernn bench --compile-time`: seconds of the first training step of a fresh Sequencer
(trace, differentiate, passes, memory plan, code generation) against a steady one."""

from __future__ import annotations

import statistics
import time

import numpy as np


def compile_times(
    cell: str, B: int, T: int, H: int, dtype, repeats: int = 3
) -> tuple[float, float]:
    """(first training step, steady training step) seconds of a fresh Sequencer(cell(H, H)):
    the first call traces, differentiates, runs the passes, plans memory and generates code.
    Medians over `repeats` fresh Sequencers."""
    from tapernn import nn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    grad_h = rng.standard_normal((T, B, H)).astype(dtype)
    firsts, steadies = [], []
    for _ in range(repeats):
        seq = nn.Sequencer(getattr(nn, cell)(H, H)).astype(dtype)
        start = time.perf_counter()
        seq.forward(x)
        seq.backward(x, grad_h)
        firsts.append(time.perf_counter() - start)
        start = time.perf_counter()
        seq.forward(x)
        seq.backward(x, grad_h)
        steadies.append(time.perf_counter() - start)
    return statistics.median(firsts), statistics.median(steadies)


def run_compile_times(dtypes) -> None:
    print(
        "\nCompile time (first forward+backward of a fresh Sequencer minus a steady one; "
        "median of 3), B=32, H=256:"
    )
    print(
        f"  {'cell':<10} {'dtype':<8} {'T=50 s':>8} {'T=100 s':>8} {'ratio':>6} {'T=100 first':>12}"
    )
    for dtype in dtypes:
        for cell in ("LSTM", "FastLSTM"):
            compile_s = {}
            for T in (50, 100):
                first, steady = compile_times(cell, 32, T, 256, dtype)
                compile_s[T] = (first - steady, first)
            print(
                f"  {cell:<10} {np.dtype(dtype).name:<8} {compile_s[50][0]:>8.2f} "
                f"{compile_s[100][0]:>8.2f} {compile_s[100][0] / compile_s[50][0]:>6.2f} "
                f"{compile_s[100][1]:>12.2f}"
            )
