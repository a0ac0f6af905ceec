"""A/B of hpeak8's two changes in one process (interleaved rounds, medians): the bench's training
step (zero_grad, forward, backward, update) of a FastLSTM Sequencer with them ("new") and
without ("old": the forward's transposed weight copy allocated per call, not made in the zeroed
`.grad`; every tap copy that does not fit the room made fresh, none held by reference).

    python tools/ab_peak8.py --shape 50,32,256 --rounds 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import tapernn_loop_step
from tapernn.nn import state_grads
from tapernn.nn.packing import Packing

OLD = [False]
_scratch_into = Packing.scratch_into


def _switchable(self, program, args):
    return [] if OLD[0] else _scratch_into(self, program, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="50,32,256", help="T,B,H")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=3, help="steps per round (their minimum)")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--aa", action="store_true", help="both models new (the noise floor)")
    p.add_argument("--old-first", action="store_true", help="build the old model first")
    a = p.parse_args()
    Packing.scratch_into = _switchable
    T, B, H = (int(v) for v in a.shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    g = rng.standard_normal((T, B, H)).astype(np.float32)
    watch = state_grads.WATCH_MIN_BYTES
    steps, times = {}, {"new": [], "old": []}
    for name in ("old", "new") if a.old_first else times:
        seq = nn.Sequencer(nn.FastLSTM(H, H)).astype("float32")
        if a.backend != "auto":
            seq.set_plan_options(PlanOptions(backend=a.backend))
        steps[name] = tapernn_loop_step(seq, x, g)

    def run(name):
        OLD[0] = name == "old" and not a.aa
        state_grads.WATCH_MIN_BYTES = 1 << 60 if OLD[0] else watch
        try:
            best = float("inf")
            for _ in range(a.steps):
                t0 = time.process_time()
                steps[name]()
                best = min(best, time.process_time() - t0)
            return best
        finally:
            OLD[0], state_grads.WATCH_MIN_BYTES = False, watch

    for name in times:  # warm-up (compiles, the steady path)
        for _ in range(3):
            run(name)
    for r in range(a.rounds):
        order = ("new", "old") if r % 2 == 0 else ("old", "new")
        for name in order:
            times[name].append(run(name))
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(
        f"(T, B, H) = ({T}, {B}, {H}) f32 {a.backend}: process CPU per step, median of "
        f"{a.rounds} rounds (min of {a.steps}): new {med['new'] * 1e3:.2f} ms, old "
        f"{med['old'] * 1e3:.2f} ms, new/old {med['new'] / med['old']:.3f}"
    )


if __name__ == "__main__":
    main()
