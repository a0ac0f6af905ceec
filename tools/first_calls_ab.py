"""A/B of two (or more) checkouts' first calls (issue 19's warm-cache first call): each round
runs tools/first_calls_fresh.py once per tree in a fresh process (the order rotated every
round; .pyc files written by a first unmeasured run of each), then prints per tree the medians
[min-max] of call 1's wall / main-thread CPU / process CPU, the switch call's wall and wait, and
the sums of calls 1..3 and 1..5 (wall, process CPU): what a stepping user (call 1) and a
training user (the sums) feel. BENCHMARKS.md "hwarm2".

Run: python tools/first_calls_ab.py --trees /work/wt/x_base $PWD --rounds 8 [--nice] [--env K=V]
     [-- 32 50 256 numba]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

# --nice: the process in a session of its own whose autogroup has nice -19 (as ab_trees.py
# --nice): on a machine other sessions load, close to what a quiet one gives it
NICE = """
import os, runpy, sys
os.setsid()
try:
    open("/proc/self/autogroup", "w").write("-19")
except OSError:
    pass
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(
    tree: str, argv: list[str], env: dict, nice: bool, cold: bool = False
) -> list[tuple[float, ...]]:
    """One fresh process of `tree`'s first_calls_fresh (`cold`: on a fresh kernel cache): per
    call (wall, main CPU, process CPU, wait)."""
    script = os.path.join(tree, "tools", "first_calls_fresh.py")
    env = dict(env, PYTHONPATH=tree)
    if cold:
        env["TAPERNN_KERNEL_CACHE"] = tempfile.mkdtemp(prefix="first_calls_ab_")
    try:
        out = subprocess.run(
            [sys.executable, *(["-c", NICE] if nice else []), script, *argv],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        if cold:
            shutil.rmtree(env["TAPERNN_KERNEL_CACHE"], ignore_errors=True)
    calls = out.strip().splitlines()[-1].split("|")[1].split()
    return [tuple(float(v.lstrip("w")) for v in c.split("/")) for c in calls]


def _stat(values: list[float]) -> str:
    return f"{np.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trees", nargs="+", required=True)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--env", nargs="*", default=[], help="K=V set in every process")
    p.add_argument("--nice", action="store_true")
    p.add_argument("--cold", action="store_true", help="a fresh kernel cache per process")
    p.add_argument("argv", nargs="*", default=["32", "50", "256", "numba"])
    a = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(kv.split("=", 1) for kv in a.env)
    for tree in a.trees:  # (.pyc files written, kernels warm)
        _run(tree, a.argv, env, a.nice)
    runs: dict[str, list] = {t: [] for t in a.trees}
    loads = []
    n = len(a.trees)
    for r in range(a.rounds):
        for tree in a.trees[r % n :] + a.trees[: r % n]:  # (each first in turn)
            runs[tree].append(_run(tree, a.argv, env, a.nice, a.cold))
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}: load {loads[-1]:.1f}", flush=True)
    print(f"load {min(loads):.1f}-{max(loads):.1f}; {a.rounds} processes per tree; argv {a.argv}")
    for tree, rows in runs.items():
        switch = [max(range(1, len(c)), key=lambda k: c[k][3]) for c in rows]
        print(f"{tree}:")
        print(f"  call 1 wall {_stat([c[0][0] for c in rows])}")
        print(f"  call 1 main CPU {_stat([c[0][1] for c in rows])}")
        print(f"  call 1 process CPU {_stat([c[0][2] for c in rows])}")
        print(
            f"  call 2 wall {_stat([c[1][0] for c in rows])}, wait {_stat([c[1][3] for c in rows])}"
        )
        print(f"  call 3 wall {_stat([c[2][0] for c in rows])}")
        print(f"  (longest wait in call {sorted({k + 1 for k in switch})})")
        for n in (3, 5):
            print(
                f"  calls 1..{n} wall {_stat([sum(x[0] for x in c[:n]) for c in rows])},"
                f" process CPU {_stat([sum(x[2] for x in c[:n]) for c in rows])}"
            )


if __name__ == "__main__":
    main()
