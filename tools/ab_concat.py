"""Custom cells written concat([x, h]) @ W (API.md section 3's MGU; hqa19's coupled-gate LSTM)
with and without passes/split_concat.py, beside the same math written x @ W_x + h @ W_h and
FastLSTM: training steps (zero_grad, forward, backward) in ONE process, arms interleaved per
round (order rotated), wall and process CPU a step. BENCHMARKS.md "hcat".

Run: PYTHONPATH=$PWD python tools/ab_concat.py [--config 50,32,256] [--dtype float32]
[--rounds 8] [--steps 4] [--arms mgu,mgu-unsplit,mgu-hand,fastlstm,cifg,cifg-unsplit]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tapernn from this checkout, hqa19's cells

from test_hunt_hqa19 import PeepCIFG as CIFG  # (concat([x, h]) @ W, o peeking at the old c)
from test_split_concat import MGU  # (API.md section 3's)

import tapernn as tn
from tapernn import nn
from tapernn import passes as P


class MGUHand(nn.Cell):  # the same math, the products written apart
    state_names = ("h",)

    def __init__(self, d, h):
        super().__init__(d, h)
        for name, shape in (("w_fx", (d, h)), ("w_fh", (h, h)), ("w_hx", (d, h)), ("w_hh", (h, h))):
            setattr(self, name, self.parameter(name, shape))
        self.b_f = self.parameter("b_f", (h,), init="zeros")
        self.b_h = self.parameter("b_h", (h,), init="zeros")

    def step(self, x, h):
        f = tn.sigmoid(x @ self.w_fx + h @ self.w_fh + self.b_f)
        g = tn.tanh(x @ self.w_hx + (f * h) @ self.w_hh + self.b_h)
        return (1 - f) * h + f * g


UNSPLIT = [p for p in P.DEFAULT if p is not P.split_concat_matmuls]
ARMS = {
    "mgu": (MGU, None),
    "mgu-unsplit": (MGU, UNSPLIT),
    "mgu-hand": (MGUHand, None),
    "fastlstm": (nn.FastLSTM, None),
    "cifg": (CIFG, None),
    "cifg-unsplit": (CIFG, UNSPLIT),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="50,32,256", help="T,B,H (default 50,32,256)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="training steps per arm a round")
    parser.add_argument("--warm", type=float, default=10.0, help="seconds of warm-up an arm")
    parser.add_argument("--arms", default=",".join(ARMS))
    args = parser.parse_args(argv)
    T, B, H = map(int, args.config.split(","))
    dtype = np.dtype(args.dtype)
    tn.set_backend("numba")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    models = {}
    for name in args.arms.split(","):
        cls, passes = ARMS[name]
        tn.manual_seed(0)
        m = nn.Sequencer(cls(H, H)).astype(dtype)
        if passes is not None:
            m.set_passes(passes)
        models[name] = m

    def step(m):
        m.zero_grad_parameters()
        m.forward(x)
        m.backward(x, g)

    for m in models.values():  # (the numba step loops compile in the background)
        start = time.perf_counter()
        while time.perf_counter() - start < args.warm:
            step(m)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    names = list(models)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step(models[name])
            times[name].append(
                (
                    (time.perf_counter() - wall) / args.steps,
                    (time.process_time() - cpu) / args.steps,
                )
            )
    first = names[0]
    print(f"(T, B, H) = ({T}, {B}, {H}) {dtype.name}, load {os.getloadavg()[0]:.1f}")
    print(f"{'arm':14} {'wall ms':>9} {'min':>8} {'CPU ms':>8} {'CPU / ' + first:>12}")
    for name in names:
        wall = [w for w, _ in times[name]]
        cpu = [c for _, c in times[name]]
        ratio = np.median([c / c0 for (_, c), (_, c0) in zip(times[name], times[first])])
        print(
            f"{name:14} {1e3 * np.median(wall):9.2f} {1e3 * min(wall):8.2f}"
            f" {1e3 * np.median(cpu):8.2f} {ratio:12.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
