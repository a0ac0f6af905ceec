"""The tutorial-size training step (issue 19): `seq.forward(x); seq.zero_grad_parameters();
seq.backward(x, g)` of Sequencer(<cell>(H, H)), per-step thread CPU time and wall, this checkout
and (with --baseline) another checkout's package in the same process, in alternating rounds.

    python tools/bench_step.py --backends numba numpy --cells FastLSTM LSTM GRU
    python tools/bench_step.py --baseline /tmp/main_checkout --rounds 5 --steps 2000
    python tools/bench_step.py --baseline /tmp/main_checkout --torch --cold 0.001 0.01

Prints per contender the best and the median of the rounds' per-step means (us). --cold: also
single calls after the thread spun (busy, in Python) for each of these many seconds, the
contenders interleaved call by call (--cold-calls each): what a call with cold caches costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(HERE, "tools"))

from bench_overhead import load_package


def make_step(tn, cell: str, backend: str, B: int, T: int, H: int, dtype: str):
    before = tn.get_backend()
    tn.set_backend(backend)
    try:
        seq = tn.nn.Sequencer(getattr(tn.nn, cell)(H, H)).astype(dtype)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(dtype)
        g = rng.standard_normal((T, B, H)).astype(dtype)
        for _ in range(3):  # compile (the backend is read when programs compile)
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, g)
    finally:
        tn.set_backend(before)
    report = seq.compile_report()
    if report.kernel:  # (what runs: a kernel that failed to compile would time NumPy)
        print(f"{cell} [{backend}] {tn.__name__}: {report.kernel}", file=sys.stderr)

    def step() -> None:
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    return step


def measure(step, n: int) -> tuple[float, float]:
    c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
    for _ in range(n):
        step()
    c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
    return (c1 - c0) / n / 1e3, (w1 - w0) / n / 1e3


def torch_step(B: int, T: int, H: int):
    import torch

    torch.set_num_threads(1)
    lstm = torch.nn.LSTM(H, H)
    x = torch.randn(T, B, H, requires_grad=True)
    g = torch.randn(T, B, H)

    def step() -> None:
        lstm.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = lstm(x)
        out.backward(g)

    for _ in range(20):
        step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="another checkout (its tapernn runs interleaved)")
    ap.add_argument("--backends", nargs="+", default=["numba"])
    ap.add_argument("--cells", nargs="+", default=["FastLSTM"])
    ap.add_argument("--config", default="1,5,5")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--torch", action="store_true", help="time torch nn.LSTM too")
    ap.add_argument("--cold", nargs="*", type=float, default=[], help="spins (s) before calls")
    ap.add_argument("--cold-calls", type=int, default=40)
    args = ap.parse_args()
    B, T, H = (int(v) for v in args.config.split(","))
    os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")
    packages = [("this", load_package(HERE, "tapernn_this"))]
    if args.baseline:
        packages.insert(0, ("base", load_package(args.baseline, "tapernn_base")))
    steps = {}
    for cell in args.cells:
        for backend in args.backends:
            for name, tn in packages:
                steps[f"{cell} [{backend}] {name}"] = make_step(
                    tn, cell, backend, B, T, H, args.dtype
                )
    if args.torch:
        steps["torch nn.LSTM"] = torch_step(B, T, H)
    cpu: dict[str, list] = {k: [] for k in steps}
    wall: dict[str, list] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, step in steps.items():
            c, w = measure(step, args.steps)
            cpu[k].append(c)
            wall[k].append(w)
    print(
        f"(B, T, H) = ({B}, {T}, {H}) {args.dtype}, {args.rounds} rounds x {args.steps} steps, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'contender':32s} {'cpu best':>9s} {'cpu med':>9s} {'wall best':>9s} {'wall med':>9s}")
    for k in steps:
        print(
            f"{k:32s} {min(cpu[k]):9.1f} {statistics.median(cpu[k]):9.1f} "
            f"{min(wall[k]):9.1f} {statistics.median(wall[k]):9.1f}"
        )
    for rest in args.cold:
        cold = cold_calls(steps, rest, args.cold_calls)
        print(f"single calls after spinning {rest * 1e3:g} ms ({args.cold_calls} each, medians)")
        for k, (c, w) in cold.items():
            print(f"{k:32s} cpu {c:9.1f}  wall {w:9.1f}")


def cold_calls(steps: dict, rest: float, n: int) -> dict[str, tuple[float, float]]:
    """Per contender: median thread CPU and wall (us) of one call made after the thread spun
    `rest` s in a Python loop; contenders take turns call by call, in alternating order."""
    cpu: dict[str, list] = {k: [] for k in steps}
    wall: dict[str, list] = {k: [] for k in steps}
    order = list(steps.items())
    for r in range(n):  # (the order reversed every other round: no contender always follows
        # the same one -- two checkouts share their cached kernels' machine code)
        for k, step in order if r % 2 == 0 else order[::-1]:
            end = time.perf_counter() + rest
            while time.perf_counter() < end:
                pass
            c, w = measure(step, 1)
            cpu[k].append(c)
            wall[k].append(w)
    return {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in steps}


if __name__ == "__main__":
    main()
