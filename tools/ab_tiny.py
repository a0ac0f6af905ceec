"""A/B of the tiny training step (issue 19's (1, 5, 5)): tools/bench.py's tapernn step
(forward, zero_grad_parameters, backward with the input's gradient) timed in alternating
processes, one per tree and round, each importing tapernn from its tree. Per process: 300
untimed steps, then blocks of steps timed by the thread's CPU time (time.thread_time_ns);
the process reports its median block (us a step). Prints each tree's median over rounds.

Run: python tools/ab_tiny.py TREE_A TREE_B [--rounds 6] [--backend numba] [--config 1,5,5]
     [--cell FastLSTM] [--dtype float32]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
from tapernn.apps.benchmark.harness import tapernn_factories, tapernn_stepper
B, T, H = (int(v) for v in sys.argv[1].split(","))
backend, cell, dtype, blocks, steps = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, H)).astype(dtype)
g = rng.standard_normal((T, B, H)).astype(dtype)
step = tapernn_stepper(tapernn_factories()[cell][0], x, g, backend)
for _ in range(300):
    step()
times = []
for _ in range(blocks):
    t = time.thread_time_ns()
    for _ in range(steps):
        step()
    times.append((time.thread_time_ns() - t) / steps / 1000)
times.sort()
import tapernn
print(json.dumps({"median": times[len(times) // 2], "best": times[0], "file": tapernn.__file__}))
"""


def run(tree: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [sys.executable, "-c", CHILD, args.config, args.backend, args.cell, args.dtype]
    cmd += [str(args.blocks), str(args.steps)]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--config", default="1,5,5", help="B,T,H (D = H)")
    ap.add_argument("--cell", default="FastLSTM")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    results: dict[str, list] = {t: [] for t in args.trees}
    for r in range(args.rounds):
        order = args.trees if r % 2 == 0 else args.trees[::-1]
        for tree in order:
            res = run(tree, args)
            results[tree].append(res)
            print(f"round {r} {tree}: median {res['median']:.2f} us, best {res['best']:.2f}")
    print(f"{args.cell} {args.config} {args.dtype} [{args.backend}], us a step (thread CPU):")
    first = None
    for tree, rs in results.items():
        med = statistics.median(r["median"] for r in rs)
        best = min(r["best"] for r in rs)
        first = first or med
        print(f"  {tree}: median of medians {med:.2f}, best {best:.2f}, ratio {med / first:.3f}")


if __name__ == "__main__":
    main()
