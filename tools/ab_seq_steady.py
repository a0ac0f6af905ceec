"""Steady forward + backward of a Seq* module against the Sequencer of its converted cell
(Sequencer(to_gru()) / Sequencer(to_fast_lstm())), in checkouts side by side (hgru): one fresh
process per (round, tree), the trees alternating; in it the two modules' calls alternate, each
timed in process CPU; printed: both medians of the last of --blocks blocks of --calls calls
(the earlier blocks warm it: numba's kernels compiled, the auto layout timed) and the median of
the per-call ratio module / Sequencer(cell), which a load change between processes moves less
(--module LSTM / GRU / FastLSTM: that cell's Sequencer against Sequencer(FastLSTM), FastLSTM's
against Sequencer(LSTM)). Across --trees: each module's time per tree (hprog's A/B):

    python tools/ab_seq_steady.py --trees /work/wt/x_base $PWD --module SeqGRU \\
        --sizes 50,2,8 400,2,8 50,32,256 --backend numpy --dtype float64 --rounds 3

Per size and tree: the medians over the rounds (min-max) of each number; the same of the
calls' minima (the least disturbed calls: on a loaded machine the medians drift)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = """
import statistics, sys, time
import numpy as np
import tapernn as tn
from tapernn import nn
name, backend, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
T, B, H = (int(v) for v in sys.argv[4].split(","))
blocks, calls = int(sys.argv[5]), int(sys.argv[6])
if name.startswith("Seq"):
    seq = getattr(nn, name)(H, H) if name != "SeqLSTMP" else nn.SeqLSTMP(H, H, H)
    fast = nn.Sequencer(seq.to_gru() if name == "SeqGRU" else seq.to_fast_lstm())
else:  # a cell's Sequencer (LSTM: against Sequencer(FastLSTM), Torch7's other LSTM)
    seq = nn.Sequencer(getattr(nn, name)(H, H))
    fast = nn.Sequencer(nn.FastLSTM(H, H) if name != "FastLSTM" else nn.LSTM(H, H))
pair = [m.astype(dtype) for m in (seq, fast)]
for m in pair:
    m.set_plan_options(tn.PlanOptions(backend=backend))
x = np.random.default_rng(0).standard_normal((T, B, H)).astype(dtype)
seed = np.ones((T, B, H), dtype)
for _ in range(blocks):
    times = [[], []]
    for _ in range(calls):
        for k, m in enumerate(pair):  # (alternating: both see the same load)
            t0 = time.process_time()
            m.forward(x)
            m.backward(x, seed)
            times[k].append(time.process_time() - t0)
ratios = [a / b for a, b in zip(*times)]
print(tn.__file__)
print(statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3, statistics.median(ratios))
print(min(times[0]) * 1e3, min(times[1]) * 1e3, min(times[0]) / min(times[1]))
"""


def measure(tree: str, args, size: str) -> tuple[float, ...]:
    """Of the last block: (module ms, Sequencer(cell) ms, median per-call-pair ratio) as
    medians, then as minima (the calls least disturbed by the other processes)."""
    env = dict(os.environ, PYTHONPATH=tree)
    argv = [args.module, args.backend, args.dtype, size, str(args.blocks), str(args.calls)]
    # (cwd = the tree: `python -c` puts the working directory first on sys.path, before
    # PYTHONPATH -- run from another checkout, every arm would import that one)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *argv],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    where, *numbers = out.stdout.split()
    if not where.startswith(os.path.abspath(tree)):
        raise SystemExit(f"the child imported {where}, not {tree}'s tapernn")
    return tuple(float(v) for v in numbers[-6:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", nargs="+", required=True)
    ap.add_argument("--module", default="SeqGRU")
    ap.add_argument("--sizes", nargs="+", default=["50,2,8"])
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    what = f"{args.module} {args.backend} {args.dtype}"
    for size in args.sizes:
        got: dict[str, list] = {t: [] for t in args.trees}
        for r in range(args.rounds):
            for tree in args.trees:
                got[tree].append(measure(tree, args, size))
                a, b, ratio, a_min, b_min, min_ratio = got[tree][-1]
                print(
                    f"round {r} ({size}) {what} {tree}: median {a:.3f} / {b:.3f} ms, {ratio:.3f}x;"
                    f" min {a_min:.3f} / {b_min:.3f} ms, {min_ratio:.3f}x"
                )
        if len(args.trees) == 2:  # per round (adjacent processes): second tree / first
            first, second = (got[t] for t in args.trees)
            for k, what_ in ((0, "module"), (1, "cell")):
                r = [b[k] / a[k] for a, b in zip(first, second)]
                print(
                    f"== ({size}) {what} {what_} second/first tree: {statistics.median(r):.3f} "
                    f"({min(r):.3f}-{max(r):.3f}) over {len(r)} rounds",
                    flush=True,
                )
        for tree, rows in got.items():
            cols = list(zip(*rows))
            med = [statistics.median(c) for c in cols]
            spread = [f"{min(c):.3f}-{max(c):.3f}" for c in cols]
            print(
                f"== ({size}) {what} {tree}: module {med[0]:.3f} ms ({spread[0]}), cell "
                f"{med[1]:.3f} ms ({spread[1]}), ratio {med[2]:.3f} ({spread[2]}); minima: module "
                f"{med[3]:.3f} ms ({spread[3]}), cell {med[4]:.3f} ms ({spread[4]}), ratio "
                f"{med[5]:.3f} ({spread[5]})",
                flush=True,
            )


if __name__ == "__main__":
    main()
