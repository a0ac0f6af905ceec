"""A/B of two checkouts in alternating processes (issue 19, branch hgap): each round runs one
process per tree (the order reversed every other round), each warming a FastLSTM training step
on the numba backend (tools/bench.py's: the harness's tapernn_stepper) then
timing `--steps` steps: per round the per-step medians of wall and process CPU, and the ratio of
the second tree to the first; at the end the medians and quartiles of the per-round ratios and
whether every tree's gradients were bit-equal to the first's. For a change that is not a switch
in one process (a reordered hand-off): the trees' own code, same data, same seed.

Run: python tools/ab_trees.py --trees /tmp/main_tree $PWD --configs 32,50,256 --rounds 10
     [--steps 40] [--dtype float32] [--nice]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, os, sys, time
if {nice}:
    os.setsid()
    try:
        open("/proc/self/autogroup", "w").write("-19")
    except OSError:
        pass
import numpy as np
import tapernn as tn
from tapernn import nn
from tapernn.apps.benchmark.harness import _sequencers, tapernn_stepper
from tapernn.backends import background
B, T, H = {config}
rng = np.random.default_rng(0)
x, g = (rng.standard_normal((T, B, H)).astype("{dtype}") for _ in "xg")
tn.manual_seed(0)
step = tapernn_stepper(nn.FastLSTM, x, g, backend="numba")  # (the bench's forward, zero, backward)
# (a tree with a packed call -- backends.kernel_calls -- runs up to it: the steady step is timed)
try:
    from tapernn.backends import kernel_calls
    calls = kernel_calls()
except ImportError:  # (a tree from before the packed call: its kernels all run from call 2)
    calls = 2
for k in range(max(10, calls + 2)):
    step()
    if k == 3:
        background.wait(300)
(seq,) = _sequencers.values()
walls, cpus = [], []
for _ in range({steps}):
    t, c = time.perf_counter(), time.process_time()
    step()
    walls.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c)
digest = [float(np.frombuffer(p.grad.tobytes(), np.uint64).sum() % 2**52) for p in seq.parameters()]
print(json.dumps({{"file": tn.__file__, "wall": walls, "cpu": cpus, "digest": digest}}))
"""


def run(tree: str, args, config: str) -> dict:
    code = CHILD.format(nice=bool(args.nice), config=config, dtype=args.dtype, steps=args.steps)
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        cwd="/tmp",
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(out.stderr)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if not got["file"].startswith(os.path.realpath(tree)):
        raise SystemExit(f"{tree}: imported {got['file']}")
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", nargs=2, required=True)
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--nice", action="store_true", help="each child in its own autogroup at -19")
    args = ap.parse_args()
    for config in args.configs:
        ratios, cpu_ratios, same = [], [], True
        med = {t: ([], []) for t in args.trees}
        for r in range(args.rounds):
            order = args.trees if r % 2 == 0 else args.trees[::-1]
            got = {t: run(t, args, config) for t in order}
            a, b = (got[t] for t in args.trees)
            same &= a["digest"] == b["digest"]
            for t in args.trees:
                med[t][0].append(np.median(got[t]["wall"]))
                med[t][1].append(np.median(got[t]["cpu"]))
            ratios.append(med[args.trees[1]][0][-1] / med[args.trees[0]][0][-1])
            cpu_ratios.append(med[args.trees[1]][1][-1] / med[args.trees[0]][1][-1])
            print(
                f"  round {r}: wall {med[args.trees[0]][0][-1] * 1e3:.2f} / "
                f"{med[args.trees[1]][0][-1] * 1e3:.2f} ms = {ratios[-1]:.3f}, process CPU "
                f"{cpu_ratios[-1]:.3f}, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        q = np.percentile(ratios, [25, 50, 75])
        qc = np.percentile(cpu_ratios, [25, 50, 75])
        print(
            f"({config}) {args.dtype}: second / first per round, wall median {q[1]:.3f} (IQR "
            f"{q[0]:.3f}-{q[2]:.3f}), process CPU {qc[1]:.3f} (IQR {qc[0]:.3f}-{qc[2]:.3f}); "
            f"gradients bit-equal: {same}"
        )


if __name__ == "__main__":
    main()
