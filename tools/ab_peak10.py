"""A/B of hpeak10 in ONE process, interleaved: "old" = the same code with pack_scratch's
placement as before (a loop's panels only in their own rows of the weight's `.grad`, none of a
transposed copy or of a weight packed from two row ranges) while the model compiles (its first
calls); "new" = the defaults. Process CPU time (both threads) and wall per step; medians over
rounds of each round's minimum of `--steps` steps. `--peak`: the tracemalloc loop peaks
(tools/peak_table.py's measure: a throw-away model first) of both arms instead.
  PYTHONPATH=$PWD python tools/ab_peak10.py --cells LSTM GRU --H 256 512 [--aa] [--peak]"""

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")

import numpy as np

import tapernn as tn
from tapernn import nn, pack_scratch
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step

CELLS = {
    "FastLSTM": lambda H: nn.FastLSTM(H, H),
    "LSTM": lambda H: nn.LSTM(H, H),
    "LSTM(peephole=False)": lambda H: nn.LSTM(H, H, peephole=False),
    "GRU": lambda H: nn.GRU(H, H),
}
NEW_PLACE = pack_scratch._place


def _old_place(graph, found, taken):
    """Before hpeak10: own rows only, not of a parameter with a transposed copy's slot, and
    none of a parameter packed twice (from any rows)."""
    count = {}
    for j, _, _ in found:
        count[j] = count.get(j, 0) + 1
    return NEW_PLACE(graph, [f for f in found if count[f[0]] == 1 and f[0] not in taken], {})


@contextlib.contextmanager
def old_code():
    pack_scratch._place = _old_place
    try:
        yield
    finally:
        pack_scratch._place = NEW_PLACE


def arm(cell, H, old, opts, T=50, B=32, warm=4):
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((T, B, H)).astype(np.float32)
    tn.manual_seed(0)
    seq = nn.Sequencer(CELLS[cell](H)).astype(np.float32)
    seq.set_plan_options(tn.PlanOptions(**opts))
    step = tapernn_loop_step(seq, x, g)
    with old_code() if old else contextlib.nullcontext():
        for _ in range(warm):
            step()
    return seq, step


def peaks(cell, H, opts):
    for name in ("old", "new"):
        with old_code() if name == "old" else contextlib.nullcontext():
            arm(cell, H, False, opts, warm=1)  # (throw-away: the process's first compiles)
            seq, step = arm(cell, H, False, opts, warm=0)
            real = loop_peak_bytes(step, 3, 3)
        unit = 50 * 32 * H * 4
        rep = seq.compile_report().peak_bytes
        print(
            f"{cell} H={H} {opts} {name}: {real / unit:.3f}U = {real / unit / 5:.4f}x 5U, "
            f"{real / unit / 4:.4f}x 4U; report/real {rep / real:.3f}",
            flush=True,
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", nargs="+", default=["LSTM", "GRU"], choices=list(CELLS))
    ap.add_argument("--H", type=int, nargs="+", default=[512])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--unowned", action="store_true", help="own_threads/batch_split off")
    ap.add_argument("--aa", action="store_true", help="both arms new (noise floor)")
    ap.add_argument("--peak", action="store_true")
    a = ap.parse_args()
    opts = {"backend": "numba"}
    if a.unowned:
        opts.update(own_threads="off", batch_split="off")
    for H in a.H:
        for cell in a.cells:
            if a.peak:
                peaks(cell, H, opts)
                continue
            arms = {"old": arm(cell, H, not a.aa, opts)[1], "new": arm(cell, H, False, opts)[1]}
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
                f"{cell} H={H}{' A/A' if a.aa else ''}: CPU old {mc['old']:.1f} new "
                f"{mc['new']:.1f} ms (new/old {mc['new'] / mc['old']:.3f}); wall old "
                f"{mw['old']:.1f} new {mw['new']:.1f} ({mw['new'] / mw['old']:.3f}); "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
