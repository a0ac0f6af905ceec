"""A/B of branch h512b's serial cuts (issue 19) in one process, interleaved with rests (the arms'
order reversed every other round): the same FastLSTM training step (numba, owned) as on main
("old": loop weights packed on the caller alone below 12 MiB, the lent panels zeroed on the
caller alone, a lent .grad's zero check one whole pass, read again
when lent, the column split at its middle), each cut alone ("pack": packed in two panel
halves from 2 MiB; "two": own_threads.in_two from 2 MiB, the
lent panels' zero-fill -- the tap's copies were tried on two threads too: 1.71 vs 1.66 ms, no
gain, now always on the caller; "head": nn/packing._zeros looks at
the head first and the backward does not read a .grad it has just seen zeroed again -- on by
default; the Python column split's "balance" arm went with that split, branch hcolN), or all
("new"), next to torch nn.LSTM f32 (--no-torch: ratios to the first arm). Each arm its own model (same seed): their
gradients must be bit-equal (the cuts move copies, zero-fills and panels between threads,
never a computed value). Prints per arm: step wall, process CPU, the caller thread's CPU
(medians, minima), the ratio, and the wall of each serial item a step.

Run: PYTHONPATH=$PWD python tools/ab_serial.py --configs 32,50,512 --reps 15
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from ab_common import arm_parser, config_arms, interleaved, print_ratios, training_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapernn import own_threads, scan_columns, scan_pack, scan_split
from tapernn.nn import packing, state_grads, steady_source

NEW = (2 << 20, 2 << 20, packing.HEAD, packing._within)  # (halves, in_two from 2 MiB)
OLD = (scan_columns.MIN_BYTES, 1 << 62, 0, lambda a, known: False)  # (main)
# each arm: which cuts it takes (pack halves, in_two, the zero check's head, the known zeros)
# head: the zero check's head and the backward's second read of a .grad skipped,
# packing._within -- this branch's default)
ARMS = {
    "old": (0, 0, 0, 0),
    "new": (1, 1, 1, 1),
    "pack": (1, 0, 0, 0),
    "two": (0, 1, 0, 0),
    "head": (0, 0, 1, 1),
}


MODE = ["old"]
ITEMS: dict = {}  # (arm, item) -> wall seconds in all; the caller's serial items


def timed(name: str, fn):
    def call(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            key = (MODE[0], name)
            ITEMS[key] = ITEMS.get(key, 0.0) + time.perf_counter() - t

    return call


scan_pack.pack = timed("pack (loop weights)", scan_pack.pack)
scan_split.zero_fill = timed("zero-fill (lent panels)", scan_split.zero_fill)
state_grads.tap_copies = steady_source.tap_copies = timed("tap_copies", state_grads.tap_copies)
packing._zeros = timed("zero check (lent .grad)", packing._zeros)


def settings(mode: str) -> None:
    MODE[0] = mode
    (
        scan_columns.PACK_MIN_BYTES,
        own_threads.TWO_MIN_BYTES,
        packing.HEAD,
        packing._within,
    ) = (n if on else o for n, o, on in zip(NEW, OLD, ARMS[mode]))


def make(B, T, H, dtype, x, g, mode):
    return training_step(x, g, H, lambda: settings(mode))


def main():
    ap = arm_parser(ARMS, ["old", "new"])
    args = ap.parse_args()
    for text in args.configs:
        print(f"load {os.getloadavg()}", flush=True)
        _, arms, models = config_arms(text, args.dtype, args.arms, make, not args.no_torch)
        for f in arms.values():
            for _ in range(3):
                f()
        ITEMS.clear()
        two = own_threads.TWO_CALLS[0]
        res = {k: ([], [], []) for k in arms}
        for r in range(args.reps):  # (the arms' order reversed every other round)
            names = list(arms) if r % 2 == 0 else list(arms)[::-1]
            one = interleaved({k: arms[k] for k in names}, 1, args.batch)
            for k in arms:
                for acc, v in zip(res[k], one[k]):
                    acc.extend(v)
        first = models[args.arms[0]].parameters()
        same = all(
            np.array_equal(p.grad, q.grad)
            for m in args.arms[1:]
            for p, q in zip(first, models[m].parameters())
        )
        base = "torch" if "torch" in res else args.arms[0]
        torch = np.median(res[base][0])
        print(
            f"({text}) {args.dtype}, {args.reps} rounds x {args.batch} steps, gradients"
            f" bit-equal: {same}, in_two calls {own_threads.TWO_CALLS[0] - two}"
        )
        for k, (wall, cpu, thread) in res.items():
            print(
                f"  {k:6s} wall {np.median(wall) * 1e3:8.2f} ms (min {min(wall) * 1e3:8.2f})"
                f"  CPU {np.median(cpu) * 1e3:8.2f}  caller CPU {np.median(thread) * 1e3:8.2f}"
                f" (min {min(thread) * 1e3:8.2f})  x {base} {np.median(wall) / torch:.3f}"
            )
        steps = args.reps * args.batch
        for item in sorted({i for _, i in ITEMS}):
            each = "  ".join(f"{m} {ITEMS.get((m, item), 0) / steps * 1e3:.3f}" for m in args.arms)
            print(f"  {item}, ms a step: {each}")
        ITEMS.clear()
        print_ratios(res, args.arms)


if __name__ == "__main__":
    main()
