"""A/B of the native column split (issue 19, BENCHMARKS.md "hcolN") in one process, interleaved
with rests (the arms' order reversed every other round): the same FastLSTM training step
(numba, owned threads) with its loops split as batch halves ("halves": main's rule at these
sizes), as native columns ("native": backends/step_columns.py, both threads in one compiled
loop, a barrier pair a GEMM; "spin": its barrier spinning ~1 s before it yields), next to torch nn.LSTM f32 (--no-torch: ratios to the first arm). Each arm its own model (same
seed): their gradients must be bit-equal. Prints per arm: step wall, process CPU, the caller
thread's CPU (medians, minima), the ratio; and the native arm's wait at the barriers (each
side's cycles waited a step, in microseconds at the cycle counter's measured rate).

Run: PYTHONPATH=$PWD python tools/ab_native.py --configs 32,50,512 --reps 15 [--nice]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ab_common import (
    alternating,
    arm_parser,
    config_arms,
    grads_equal,
    print_arms,
    print_ratios,
    training_step,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timeline_step import apply_nice, nice_option

from tapernn import scan_columns
from tapernn.backends import step_columns

NEVER = 1 << 62
# each arm's (scan_columns.MIN_BYTES, _l3: read when a loop compiles; the barrier's spins before
# it yields, None: --spins): "spin" spins ~1 s before it yields
ARMS = {"halves": (NEVER, 0, None), "native": (0, 0, None), "spin": (0, 0, 1 << 22)}
SPINS = [step_columns.SPINS]


def settings(mode: str) -> None:
    scan_columns.MIN_BYTES, l3, spins = ARMS[mode]
    scan_columns._l3[0] = l3
    step_columns.SPINS = SPINS[0] if spins is None else spins


def make(B, T, H, dtype, x, g, mode):
    return training_step(x, g, H, lambda: settings(mode))


def cycle_rate() -> float:
    """The cycle counter's ticks a second (numba_spin._cycles over 0.2 s of perf_counter)."""
    from numba import njit

    from tapernn.backends.numba_spin import _cycles

    read = njit(lambda: _cycles())
    read()
    c, t = read(), time.perf_counter()
    time.sleep(0.2)
    return (read() - c) / (time.perf_counter() - t)


def main():
    ap = arm_parser(ARMS, ["halves", "native"])
    ap.add_argument("--spins", type=int, default=step_columns.SPINS)
    nice_option(ap)
    args = ap.parse_args()
    apply_nice(args)
    SPINS[0] = args.spins
    rate = cycle_rate()
    for text in args.configs:
        print(f"load {os.getloadavg()}", flush=True)
        (_, T, _), arms, models = config_arms(text, args.dtype, args.arms, make, not args.no_torch)
        for f in arms.values():
            for _ in range(3):
                f()
        waited, calls = list(step_columns.WAITED), step_columns.CALLS[0]
        res = alternating(arms, args.reps, args.batch)
        same = grads_equal(models, args.arms)
        print(
            f"({text}) {args.dtype}, {args.reps} rounds x {args.batch} steps, spins {args.spins},"
            f" gradients bit-equal: {same}, native loop calls {step_columns.CALLS[0] - calls}"
        )
        print_arms(res, "torch" if "torch" in res else args.arms[0])
        if "native" in res and "spin" not in res:
            steps = args.reps * args.batch * 2 * T  # (a forward and a reverse loop a step)
            each = [(w - w0) / rate / steps * 1e6 for w, w0 in zip(step_columns.WAITED, waited)]
            print(
                f"  native: barrier wait a loop step (us), caller {each[1]:.1f} before its GEMM"
                f" + {each[0]:.1f} after, worker {each[3]:.1f} + {each[2]:.1f}"
            )
        print_ratios(res, args.arms)


if __name__ == "__main__":
    main()
