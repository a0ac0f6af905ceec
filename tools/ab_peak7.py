"""A/B of hpeak7's three loop-peak changes (issue 19) in one process: "new" is the default;
"old" is the same model with them off -- weight gradients into temporaries
(PlanOptions(grad_into_min_bytes=0)), the forward's loop-weight copy in the arena (arena.per_call
stubbed while it compiles) and get_grad_hidden_state's copies in new memory (its pair's tap_room
answering None). Interleaved rounds of steps (zero_grad, forward, backward, update), medians;
then each one's tracemalloc loop peak in U = T*B*H*itemsize.

    python tools/ab_peak7.py --shape 50,32,256 --cells FastLSTM --rounds 8 --steps 3
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext

import numpy as np

from tapernn import PlanOptions, arena, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.nn.training_pair import TrainingPair

CELLS = {
    "FastLSTM": lambda H: nn.FastLSTM(H, H),
    "LSTM(peephole=False)": lambda H: nn.LSTM(H, H, peephole=False),
    "LSTM": lambda H: nn.LSTM(H, H),
    "GRU": lambda H: nn.GRU(H, H),
}


OFF = {"grad_into", "per_call", "tap_room"}  # what "old" turns off (--off)


class Old:
    """While entered: what compiles and runs is the "old" variant (see the module doc)."""

    def __enter__(self):
        self.per_call, self.tap_room = arena.per_call, TrainingPair.tap_room
        if "per_call" in OFF:
            arena.per_call = lambda graph: frozenset()
        if "tap_room" in OFF:
            TrainingPair.tap_room = lambda pair, program: None

    def __exit__(self, *exc):
        arena.per_call, TrainingPair.tap_room = self.per_call, self.tap_room


def fresh(cell: str, H: int, dtype: str, old: bool):
    seq = nn.Sequencer(CELLS[cell](H)).astype(dtype)
    off = old and "grad_into" in OFF
    return seq.set_plan_options(PlanOptions(grad_into_min_bytes=0)) if off else seq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="50,32,256", help="T,B,H")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--cells", nargs="*", default=["FastLSTM"], choices=list(CELLS))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no-grad-input", action="store_true")
    p.add_argument("--off", nargs="*", default=sorted(OFF), choices=sorted(OFF))
    a = p.parse_args()
    OFF.intersection_update(a.off)
    T, B, H = (int(v) for v in a.shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(a.dtype)
    g = rng.standard_normal((T, B, H)).astype(a.dtype)
    unit = T * B * H * np.dtype(a.dtype).itemsize
    print(f"(T, B, H) = ({T}, {B}, {H}) {a.dtype}; load {os.getloadavg()[0]:.2f}")
    for cell in a.cells:
        peaks, reports, steps = {}, {}, {}
        for k in ("new", "old"):  # (fresh models: the peak counts their compilation's arrays)
            seq = fresh(cell, H, a.dtype, k == "old")
            step = tapernn_loop_step(seq, x, g, need_grad_input=not a.no_grad_input)
            with Old() if k == "old" else nullcontext():
                peaks[k] = loop_peak_bytes(step) / unit
                reports[k] = seq.compile_report().peak_bytes / unit
            steps[k] = step
        times: dict[str, list[float]] = {"new": [], "old": []}
        cpu: dict[str, list[float]] = {"new": [], "old": []}
        for r in range(a.rounds):
            for k in ("new", "old") if r % 2 == 0 else ("old", "new"):
                with Old() if k == "old" else nullcontext():
                    for _ in range(a.steps):
                        t0, c0 = time.perf_counter(), time.process_time()
                        steps[k]()
                        times[k].append(time.perf_counter() - t0)
                        cpu[k].append(time.process_time() - c0)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        mcpu = {k: float(np.median(v)) * 1e3 for k, v in cpu.items()}
        print(
            f"{cell}: step median new {med['new']:.1f} ms, old {med['old']:.1f} ms "
            f"(new/old {med['new'] / med['old']:.3f}; process CPU {mcpu['new']:.1f} / "
            f"{mcpu['old']:.1f} ms, {mcpu['new'] / mcpu['old']:.3f}); loop peak new {peaks['new']:.2f}U "
            f"(report {reports['new']:.2f}U), old {peaks['old']:.2f}U "
            f"(report {reports['old']:.2f}U); load {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
