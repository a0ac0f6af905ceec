"""Concat-written custom cells on the numba fast paths (batch split, step loops, packed GEMMs;
passes/split_concat.py) against the NumPy backend and the pass-free program: API.md's MGU and
hqa19's coupled-gate LSTM stacked, the lower layer mask_zero(), zero input rows, float64,
every output and gradient over `--seconds` of training steps. BENCHMARKS.md "hcat".

Run: PYTHONPATH=$PWD python tools/check_concat_fast.py [--seconds 60] [--config 7,32,256]
Exit status 1 if any difference exceeds --tol (default 1e-11).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tapernn from this checkout, the cells

from test_hunt_hqa19 import PeepCIFG
from test_split_concat import MGU

import tapernn as tn
from tapernn import nn


def _steps(model, x, g, n):
    out = []
    for _ in range(n):
        model.zero_grad_parameters()
        y, dx = model.forward(x).copy(), model.backward(x, g).copy()
        out.append([y, dx] + [p.grad.copy() for p in model.parameters()])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--config", default="7,32,256", help="T,B,H (default 7,32,256)")
    parser.add_argument("--tol", type=float, default=1e-11)
    args = parser.parse_args(argv)
    T, B, H = map(int, args.config.split(","))
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    x[T // 2, :5] = x[-1, 7] = 0  # (rows the lower layer resets)
    failed = False
    for cls in (MGU, PeepCIFG):

        def build(passes=None, cls=cls):
            tn.manual_seed(3)
            m = nn.Sequencer(nn.Sequential().add(cls(H, H).mask_zero()).add(cls(H, H)))
            return m.set_passes(passes) if passes is not None else m

        tn.set_backend("numpy")
        (want,), (bare,) = _steps(build(), x, g, 1), _steps(build([]), x, g, 1)
        tn.set_backend("numba")
        model, start, calls, worst = build(), time.perf_counter(), 0, 0.0
        while time.perf_counter() - start < args.seconds or calls < 3:
            (got,) = _steps(model, x, g, 1)
            worst = max([worst] + [float(np.max(np.abs(a - b))) for a, b in zip(got, want)])
            calls += 1
        apart = max(float(np.max(np.abs(a - b))) for a, b in zip(want, bare))
        failed |= max(worst, apart) > args.tol
        print(
            f"{cls.__name__}: {calls} numba training steps, worst |numba - numpy| {worst:.2e},"
            f" |numpy - no passes| {apart:.2e}"
        )
        for line in str(model.compile_report()).splitlines():
            if line.startswith(("loop", "reverse")):
                print("  ", line[line.find("Python loop") :][:240])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
