"""hpeak9: the numba backend's packed loop panels made in the packed weight's zeroed `.grad`
(pack_scratch.py). Peaks (tracemalloc, the report) and an A/B of the training step's process
CPU time in one process (interleaved rounds, medians), "new" lending the `.grad` to the panels,
"old" not (the panels allocated per loop call, as before; the transposed-copy scratch kept).

    TAPERNN_NUMBA_BACKGROUND=0 python tools/ab_peak9.py --shape 50,32,512 --peak
    TAPERNN_NUMBA_BACKGROUND=0 python tools/ab_peak9.py --shape 50,32,256 --rounds 12
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.nn.packing import Packing

OLD = [False]


def _switchable(method):
    def lend(self, program, *args):
        prog = program.program
        loops = getattr(prog, "loop_scratch", None)
        if not (OLD[0] and loops):
            return method(self, program, *args)
        prog.loop_scratch = {}
        try:
            return method(self, program, *args)
        finally:
            prog.loop_scratch = loops

    return lend


def model(H: int, backend: str):
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype("float32")
    return seq.set_plan_options(PlanOptions(backend=backend))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="50,32,256", help="T,B,H")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=3, help="steps per round (their minimum)")
    p.add_argument("--backend", default="numba")
    p.add_argument("--peak", action="store_true", help="the peaks, not the times")
    p.add_argument("--aa", action="store_true", help="both models new (the noise floor)")
    a = p.parse_args()
    Packing.scratch_into = _switchable(Packing.scratch_into)
    Packing.compute_into = _switchable(Packing.compute_into)
    T, B, H = (int(v) for v in a.shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    g = rng.standard_normal((T, B, H)).astype(np.float32)
    unit = T * B * H * 4
    if a.peak:
        for name in ("new", "old"):
            OLD[0] = name == "old"
            seq = model(H, a.backend)
            peak = loop_peak_bytes(tapernn_loop_step(seq, x, g))
            report = seq.compile_report().peak_bytes
            print(
                f"({T}, {B}, {H}) f32 {a.backend} {name}: tracemalloc {peak / unit:.3f}U = "
                f"{peak / unit / 5:.3f}x the BPTT minimum; report {report / unit:.3f}U "
                f"({report / peak - 1:+.1%})"
            )
        return
    steps, times = {}, {"new": [], "old": []}
    for name in times:
        steps[name] = tapernn_loop_step(model(H, a.backend), x, g)

    def run(name):
        OLD[0] = name == "old" and not a.aa
        try:
            best = float("inf")
            for _ in range(a.steps):
                t0 = time.process_time()
                steps[name]()
                best = min(best, time.process_time() - t0)
            return best
        finally:
            OLD[0] = False

    for name in times:  # warm-up (compiles, the steady path)
        for _ in range(3):
            run(name)
    for r in range(a.rounds):
        for name in ("new", "old") if r % 2 == 0 else ("old", "new"):
            times[name].append(run(name))
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(
        f"(T, B, H) = ({T}, {B}, {H}) f32 {a.backend}: process CPU per step, median of "
        f"{a.rounds} rounds (min of {a.steps}): new {med['new'] * 1e3:.2f} ms, old "
        f"{med['old'] * 1e3:.2f} ms, new/old {med['new'] / med['old']:.3f}"
    )


if __name__ == "__main__":
    main()
