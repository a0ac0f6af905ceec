"""Whole runs from process start on each backend (what chose the default, "auto": BENCHMARKS.md,
"numba as the default backend"): fresh interpreters, variants rotated per round, wall and CPU
(children's rusage) and the load. A "warm" variant reuses a kernel cache one numba run of the
same configuration filled first; a "cold" one starts an empty cache.

    python tools/bench_backends.py --rounds 2 --configs steps:1,5,5x100 demo train:300
    python tools/bench_backends.py --variants numpy numba-warm auto-warm --configs steps:32,50,256x1000

Configs: steps:B,T,Hx<steps> (float32 Sequencer(FastLSTM(H, H)) training steps; prints the
median of the last 50 steps too), demo (`tapernn demo`), train:<steps> (`tapernn train`).
Prints one JSON line per run, then a table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["numpy", "numba-warm", "numba-cold", "auto-warm", "auto-cold"]
_STEPS = """
import json, sys, time
start = time.perf_counter()
import numpy as np
import tapernn as tn
from tapernn import nn
(B, T, H), n = map(int, sys.argv[1].split(",")), int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, H)).astype(np.float32)
g = rng.standard_normal((T, B, H)).astype(np.float32)
seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.float32)
steps = []
for _ in range(n):
    t = time.perf_counter()
    seq.forward(x); seq.zero_grad_parameters(); seq.backward(x, g)
    steps.append(time.perf_counter() - t)
last = sorted(steps[-50:])[len(steps[-50:]) // 2]
print(json.dumps({"steady_ms": last * 1e3, "numba": "numba" in sys.modules}))
"""


def _command(config: str) -> list[str]:
    kind, _, arg = config.partition(":")
    if kind == "demo":
        return [sys.executable, "-m", "tapernn", "demo", "--diagram", ""]
    if kind == "train":
        return [sys.executable, "-m", "tapernn", "train", "--steps", arg, "--no-progress"]
    size, steps = arg.split("x")
    return [sys.executable, "-c", _STEPS, size, steps]


def run(config: str, variant: str, warm: dict) -> dict:
    backend, _, cache = variant.partition("-")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TAPERNN_BACKEND=backend)
    env.pop("TAPERNN_NUMBA_BACKGROUND", None)
    folder = warm.get(config) if cache == "warm" else None
    if folder is None:
        folder = tempfile.mkdtemp(prefix="tapernn-kernels-")
        if cache == "warm":
            warm[config] = folder
    env["TAPERNN_KERNEL_CACHE"] = folder
    before, load = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(
        _command(config),
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if cache != "warm":
        shutil.rmtree(folder, ignore_errors=True)
    out = {"config": config, "variant": variant, "wall": wall, "cpu": cpu, "load": load}
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if last.startswith("{"):
        out.update(json.loads(last))
    if done.returncode:
        out["error"] = done.stderr[-300:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["steps:1,5,5x100", "demo"])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    args = parser.parse_args()
    warm: dict = {}
    for config in args.configs:  # fill the warm caches
        if any(v.endswith("warm") for v in args.variants):
            run(config, "numba-warm", warm)
    rows = []
    for k in range(args.rounds):
        for config in args.configs:
            turn = k % len(args.variants)
            for variant in args.variants[turn:] + args.variants[:turn]:
                rows.append(run(config, variant, warm))
                print(json.dumps(rows[-1]), flush=True)
    for folder in warm.values():
        shutil.rmtree(folder, ignore_errors=True)
    print("\nconfig, variant: median wall / CPU s (load)")
    for config in args.configs:
        for variant in args.variants:
            mine = [r for r in rows if r["config"] == config and r["variant"] == variant]
            wall = statistics.median(r["wall"] for r in mine)
            cpu = statistics.median(r["cpu"] for r in mine)
            loads = [r["load"] for r in mine]
            print(
                f"  {config:<22} {variant:<11} {wall:8.2f} / {cpu:7.2f} s "
                f"(load {min(loads):.1f}-{max(loads):.1f})"
            )


if __name__ == "__main__":
    main()
