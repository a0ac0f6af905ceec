"""A/B of branch hlift (issue 19's cold-CI cost): the whole-loop and whole-program kernels'
texts with their sizes literal against read from `dims` (size_lift), tapernn numba Sequencer
models, one process, interleaved rounds, thread / process CPU per training step, gradients
compared bit for bit. Arms (each model compiled under its texts, then timed round-robin):
  old:   loop kernels' sizes written in (main before hlift), programs' innermost counts literal
  loops: loop kernels lifted at any B (loop_source.LITERAL_ROWS 0), programs as old
  new:   everything lifted (programs' innermost counts too)
  as-is: the defaults of this tree (loops literal: LITERAL_ROWS off)
  mm:    as-is, loop kernels' small 2-D products as ProgramSource.matmul's (columns innermost)
  inner: as-is, loop kernels' innermost nested counts literal (mm-inner: both)

Run: PYTHONPATH=$PWD python tools/ab_lift.py --configs 1,5,5 --cell FastLSTM --reps 15
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_common import config_arms, interleaved, training_step

from tapernn.backends import loop_source, program_source
from tapernn.backends.size_lift import sizes_written_in

ARMS = {  # name -> (loop texts literal, literal at B = 1, program innermost kept)
    "old": (True, True, True),
    "loops": (False, False, True),
    "new": (False, False, False),
    "mm": (False, True, True, "mm"),
    "inner": (False, True, True, "inner"),
    "mm-inner": (False, True, True, "mm", "inner"),
    "as-is": None,
}


def columns_innermost(self, n, ins, dt, fallback):
    """ProgramSource.matmul's form for a loop kernel (the arm "mm")."""
    out = program_source.columns_innermost(self, n, ins, dt)
    return fallback(self, n, ins, dt) if out is None else out


def tn_step(B, T, H, dtype, x, g, mode, cell="FastLSTM"):
    step, seq = training_step(x.astype(dtype), g.astype(dtype), H, cell=cell)
    flags = ARMS[mode]
    if flags is None:
        for _ in range(6):
            step()
        return step, seq
    original = loop_source.LoopSource.source
    saved = (loop_source.LITERAL_ROWS[0], program_source.KEEP_INNERMOST[0])

    def literal(self):
        text = original(self)
        return sizes_written_in(text, self.dims) if flags[0] else text

    loop_source.LoopSource.source = literal  # (its kernels generated now: no background)
    matmul = loop_source.LoopSource.matmul
    lift = loop_source.lift_function
    if "inner" in flags[3:]:
        loop_source.lift_function = lambda head, body, dims: lift(head, body, dims, True)
    if "mm" in flags[3:]:
        loop_source.LoopSource.matmul = lambda self, n, ins, dt: columns_innermost(
            self, n, ins, dt, matmul
        )
    loop_source.LITERAL_ROWS[0], program_source.KEEP_INNERMOST[0] = 1 if flags[1] else 0, flags[2]
    os.environ["TAPERNN_NUMBA_BACKGROUND"] = "0"
    try:
        for _ in range(6):
            step()
    finally:
        loop_source.LoopSource.source = original
        loop_source.LoopSource.matmul = matmul
        loop_source.lift_function = lift
        loop_source.LITERAL_ROWS[0], program_source.KEEP_INNERMOST[0] = saved
        os.environ.pop("TAPERNN_NUMBA_BACKGROUND")
    return step, seq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["1,5,5"])
    ap.add_argument("--arms", nargs="+", default=["old", "loops", "as-is"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cell", default="FastLSTM", help="FastLSTM, LSTM or GRU")
    args = ap.parse_args()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        (B, T, H), arms, models = config_arms(
            text, args.dtype, args.arms, tn_step, False, args.cell
        )
        first = models[args.arms[0]]
        for k in args.arms[1:]:
            same = all(
                np.array_equal(p.grad, q.grad)
                for p, q in zip(first.parameters(), models[k].parameters())
            )
            print(f"{args.arms[0]} and {k} gradients bit-identical: {same}")
        for k in args.arms:
            print(f"  {k}:", [r.kernel[-50:] for r in models[k].compile_report().loops])
        res = interleaved(arms, args.reps, args.batch, rest=0.02)
        for k, (w, pcpu, tcpu) in res.items():
            print(
                f"({B},{T},{H}) {args.cell} {args.dtype} {k:6s} thread CPU"
                f" {np.median(tcpu) * 1e6:7.2f} us (min {min(tcpu) * 1e6:7.2f}), process CPU"
                f" {np.median(pcpu) * 1e6:7.2f}, wall {np.median(w) * 1e6:7.2f} us"
            )
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
