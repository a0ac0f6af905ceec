"""A/B of the whole-loop kernels' smallest vectorised trip count (numba_interleave.TRIP, issue
19, BENCHMARKS.md "hvec5") in ONE process: two numba Sequencers of one cell, one built with
TRIP = 0 (LLVM's default, 16: the kernels before) and one with TRIP = 4, trained in alternating
blocks of steps timed by the thread's CPU time (time.thread_time_ns); prints each arm's median
and best block (us a step) and checks that both give the same bits.

Run: PYTHONPATH=$PWD python tools/ab_trips.py [--cell FastLSTM] [--config 1,5,5]
     [--dtype float32] [--blocks 31] [--steps 1000]
"""

import argparse
import statistics
import time

import numpy as np

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_interleave


def stepper(cell: str, trip: int, x: np.ndarray, g: np.ndarray):
    numba_interleave.TRIP[0] = trip
    tn.manual_seed(0)
    m = nn.Sequencer(getattr(nn, cell)(x.shape[2], g.shape[2])).astype(x.dtype)
    m.set_plan_options(tn.PlanOptions(backend="numba"))

    def step():
        m.forward(x)
        m.zero_grad_parameters()
        return m.backward(x, g)

    for _ in range(300):  # (compiles: numba's switch at call 100 at most)
        step()
    return m, step


def parsed(description: str, *flags: str) -> tuple:
    """(args, x, g): the command line (`flags`: more on / off options) and the step's input and
    output gradient of its config and dtype."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--cell", default="FastLSTM")
    ap.add_argument("--config", default="1,5,5", help="B,T,H (D = H)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--blocks", type=int, default=31)
    ap.add_argument("--steps", type=int, default=1000)
    for flag in flags:
        ap.add_argument(flag, action="store_true")
    args = ap.parse_args()
    B, T, H = (int(v) for v in args.config.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(args.dtype)
    g = rng.standard_normal((T, B, H)).astype(args.dtype)
    return args, x, g


def main() -> None:
    args, x, g = parsed(__doc__.splitlines()[0])
    arms = {trip: stepper(args.cell, trip, x, g) for trip in (0, 4)}
    numba_interleave.TRIP[0] = 4
    outs = {trip: (np.array(m.forward(x)), np.array(step())) for trip, (m, step) in arms.items()}
    same = all(np.array_equal(a, b) for a, b in zip(outs[0], outs[4]))
    times: dict[int, list[float]] = {trip: [] for trip in arms}
    for b in range(args.blocks):
        for trip in (0, 4) if b % 2 == 0 else (4, 0):
            step = arms[trip][1]
            t = time.thread_time_ns()
            for _ in range(args.steps):
                step()
            times[trip].append((time.thread_time_ns() - t) / args.steps / 1000)
    print(
        f"{args.cell} {args.config} {args.dtype} [numba], us a step (thread CPU), same bits: {same}"
    )
    base = statistics.median(times[0])
    for trip, ts in times.items():
        med = statistics.median(ts)
        print(f"  TRIP {trip}: median {med:.2f}, best {min(ts):.2f}, ratio {med / base:.3f}")


if __name__ == "__main__":
    main()
