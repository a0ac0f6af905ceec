"""hwin: the built-in GRU and API.md's MGU training steps (numba) with a narrower projection in
the loop's slab as a strided window over each batch row's last columns (regions._candidates),
against main's placement (contiguous at the rows' end: the window left out of the candidates
while that arm's model compiles, so its forward runs unsplit: scan_split `_apart`). ONE process,
arms interleaved per round (order rotated): forward wall, step wall and process CPU a step,
each arm's compile-report peak. BENCHMARKS.md "hwin".

Run: PYTHONPATH=$PWD python tools/ab_xs_window.py [--config 50,32,256] [--dtype float32]
[--rounds 10] [--steps 4] [--cells gru,mgu] [--masked]
(--masked: every call with `lengths=`, a third of the rows shorter: FastLSTM's and LSTM's
projections are then narrower than their rows too)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tapernn from this checkout, the MGU cell

from test_split_concat import MGU  # (API.md section 3's)

import tapernn as tn
from tapernn import nn, regions

MAIN = [False]  # the arm being run is main's placement
_where = regions._candidates


def _main_candidates(m, start, row, length, rows):
    """Main's: the rows' start, else their end (contiguous), no window."""
    return _where(m, start, row, length, None if MAIN[0] else rows)


regions._candidates = _main_candidates
CELLS = {"gru": nn.GRU, "mgu": MGU, "fastlstm": nn.FastLSTM, "lstm": nn.LSTM}


def _model(cls, H: int, dtype: str):
    tn.manual_seed(0)
    return nn.Sequencer(cls(H, H)).astype(np.dtype(dtype))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="50,32,256", help="T,B,H (default 50,32,256)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4, help="training steps per arm a round")
    parser.add_argument("--warm", type=float, default=8.0, help="seconds of warm-up an arm")
    parser.add_argument("--cells", default="gru,mgu", help=f"of {', '.join(CELLS)}")
    parser.add_argument("--masked", action="store_true", help="calls with lengths=")
    args = parser.parse_args(argv)
    arms = {}
    for cell in args.cells.split(","):
        arms[cell], arms[f"{cell}-main"] = (CELLS[cell], False), (CELLS[cell], True)
    T, B, H = map(int, args.config.split(","))
    tn.set_backend("numba")
    rng = np.random.default_rng(0)
    x, g = (rng.standard_normal((T, B, H)).astype(args.dtype) for _ in range(2))
    models = {name: _model(cls, H, args.dtype) for name, (cls, _) in arms.items()}
    kw = {"lengths": np.where(np.arange(B) % 3 == 0, T - T // 4, T)} if args.masked else {}

    def step(name) -> float:
        m = models[name]
        MAIN[0] = arms[name][1]
        try:
            m.zero_grad_parameters()
            start = time.perf_counter()
            m.forward(x, **kw)
            fwd = time.perf_counter() - start
            m.backward(x, g)
        finally:
            MAIN[0] = False
        return fwd

    for name in models:  # (the numba step loops compile in the background)
        until = time.perf_counter() + args.warm
        while time.perf_counter() < until:
            step(name)
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in models}
    names, n = list(models), args.steps
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            fwd = sum(step(name) for _ in range(n))
            t1, c1 = time.perf_counter(), time.process_time()
            times[name].append(((t1 - t0) / n, (c1 - c0) / n, fwd / n))
    print(f"(T, B, H) = ({T}, {B}, {H}) {args.dtype}, load {os.getloadavg()[0]:.1f}")
    print(f"{'arm':10} {'fwd wall':>9} {'step wall':>10} {'CPU ms':>8} {'peak bytes':>12}  loop")
    for name in names:
        wall, cpu, fwd = (1e3 * np.median([t[k] for t in times[name]]) for k in range(3))
        rep = models[name].compile_report()
        kernel = rep.loops[0].kernel
        how = "unsplit calls" if "run unsplit" in kernel else "split" if "split" in kernel else "-"
        print(f"{name:10} {fwd:9.2f} {wall:10.2f} {cpu:8.2f} {rep.peak_bytes:12,}  {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
