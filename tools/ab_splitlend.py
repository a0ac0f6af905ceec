"""A/B of hsplitlend in ONE process, interleaved: "old" = the same code with the split loop's
lending, the halves' carved buffers and the per-call NumPy carry pairs switched off while the
model compiles (its first calls); "new" = the defaults. Process CPU time (both threads) and
wall per step; medians over rounds of each round's minimum of `--steps` steps.
  PYTHONPATH=$PWD python tools/ab_splitlend.py --backend numba --H 256 512 [--aa]"""

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")

import numpy as np

import tapernn as tn
import tapernn.codegen
from tapernn import nn, scan_run, scan_split
from tapernn.apps.benchmark.memory import tapernn_loop_step


@contextlib.contextmanager
def old_code():
    saved = (tapernn.codegen.loop_slots, scan_split.BufferPool.once, scan_run.CARRY_HELD_BYTES)
    tapernn.codegen.loop_slots = lambda *a: {}
    scan_split.BufferPool.once = lambda self: lambda buffers: None
    scan_run.CARRY_HELD_BYTES = 1 << 40
    try:
        yield
    finally:
        tapernn.codegen.loop_slots, scan_split.BufferPool.once, scan_run.CARRY_HELD_BYTES = saved


def arm(backend, H, old, T=50, B=32):
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((T, B, H)).astype(np.float32)
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.float32)
    seq.set_plan_options(tn.PlanOptions(backend=backend))
    step = tapernn_loop_step(seq, x, g)
    with old_code() if old else contextlib.nullcontext():
        for _ in range(4):
            step()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--H", type=int, nargs="+", default=[256])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--aa", action="store_true", help="both arms new (noise floor)")
    a = ap.parse_args()
    for H in a.H:
        arms = {"old": arm(a.backend, H, not a.aa), "new": arm(a.backend, H, False)}
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
            f"{a.backend} H={H}{' A/A' if a.aa else ''}: CPU old {mc['old']:.1f} new {mc['new']:.1f} ms"
            f" (new/old {mc['new'] / mc['old']:.3f}); wall old {mw['old']:.1f} new {mw['new']:.1f}"
            f" ({mw['new'] / mw['old']:.3f}); load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
