"""A/B of hpeep in ONE process, interleaved: "old" = the same code with the input gradient's
tail (donate.tail_gemms), sum_mul without its product array, the split halves' late-xs copies
and the tap room's parameters-first order switched off while the model compiles (its first
calls); "new" = the defaults. Process CPU time (both threads) and wall per step; medians over
rounds of each round's minimum of `--steps` steps (the arms' order reversed every round).
  PYTHONPATH=$PWD python tools/ab_peep.py --backend numpy --cells FastLSTM LSTM --H 256 [--aa]"""

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")

import numpy as np

import tapernn as tn
import tapernn.arena
from tapernn import nn, scan_split
from tapernn.apps.benchmark.memory import tapernn_loop_step
from tapernn.nn import state_grads
from tapernn.passes import push_out_grads

CELLS = {"FastLSTM": nn.FastLSTM, "LSTM": nn.LSTM, "GRU": nn.GRU}


PARTS = ("tail", "late", "taps", "sum_mul")


@contextlib.contextmanager
def old_code(parts=PARTS):
    saved = (tapernn.arena.tail_gemms, scan_split.SplitRunner._late, state_grads.tap_places)
    places = state_grads.tap_places
    if "tail" in parts:
        tapernn.arena.tail_gemms = lambda *a, **k: {}
    if "late" in parts:
        scan_split.SplitRunner._late = lambda self, c, half: (
            {} if self.helpers["reads"](c)[0] == "first" else None
        )
    if "taps" in parts:
        state_grads.tap_places = lambda sizes, room, watch=frozenset(): places(sizes, room)
    push_out_grads.SUM_MUL_PRODUCT[0] = "sum_mul" in parts
    try:
        yield
    finally:
        tapernn.arena.tail_gemms, scan_split.SplitRunner._late, state_grads.tap_places = saved
        push_out_grads.SUM_MUL_PRODUCT[0] = False


def arm(backend, cell, H, old, T=50, B=32, parts=PARTS):
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((T, B, H)).astype(np.float32)
    tn.manual_seed(0)
    seq = nn.Sequencer(CELLS[cell](H, H)).astype(np.float32)
    seq.set_plan_options(tn.PlanOptions(backend=backend))
    step = tapernn_loop_step(seq, x, g)
    with old_code(parts) if old else contextlib.nullcontext():
        for _ in range(4):
            step()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--cells", nargs="+", default=["FastLSTM"], choices=list(CELLS))
    ap.add_argument("--H", type=int, nargs="+", default=[256])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--aa", action="store_true", help="both arms new (noise floor)")
    ap.add_argument("--new-first", action="store_true", help="build the new arm's model first")
    ap.add_argument("--old", nargs="+", default=list(PARTS), choices=PARTS, help="what is off")
    a = ap.parse_args()
    for cell in a.cells:
        for H in a.H:
            if a.new_first:  # (the order the models are built in: hpeak8 saw a bias)
                new = arm(a.backend, cell, H, False)
                old = arm(a.backend, cell, H, not a.aa, parts=a.old)
            else:
                old = arm(a.backend, cell, H, not a.aa, parts=a.old)
                new = arm(a.backend, cell, H, False)
            arms = {"old": old, "new": new}
            cpu = {k: [] for k in arms}
            wall = {k: [] for k in arms}
            for r in range(a.rounds):
                for name in list(arms)[:: 1 if r % 2 else -1]:
                    c, w = [], []
                    for _ in range(a.steps):
                        c0, w0 = time.process_time(), time.perf_counter()
                        arms[name]()
                        c.append(time.process_time() - c0)
                        w.append(time.perf_counter() - w0)
                    cpu[name].append(min(c))
                    wall[name].append(min(w))
            mc = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
            mw = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
            print(
                f"{a.backend} {cell} H={H}{' A/A' if a.aa else ''}: CPU old {mc['old']:.1f} new "
                f"{mc['new']:.1f} ms (new/old {mc['new'] / mc['old']:.3f}); wall old "
                f"{mw['old']:.1f} new {mw['new']:.1f} ({mw['new'] / mw['old']:.3f}); "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
