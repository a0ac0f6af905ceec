""" "auto"'s start call on a COLD kernel cache, with the background worker held while numba's plan
compiles (background.held, the default) against not held (main before "htrace": held patched to
a no-op), in alternating fresh processes, each with a fresh $TAPERNN_KERNEL_CACHE: the default
backend's Sequencer(FastLSTM(H, H)) f32 (T, B), forward + backward per call. Per process: the
start call's wall / caller thread CPU, the compile's (TwoPlans._compile) wall / thread CPU, the
window's calls (start, switch) summed, the switch call's wall, and how many window calls ran the
pool's BLAS threads (blas_tuning: such calls run 10-30x slower with the other core busy).

Run: PYTHONPATH=$PWD python tools/htrace_ab.py --counts 3,30 --reps 4   (BENCHMARKS.md "htrace")
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(arm: str, start: int, switch: int, T: int, B: int, H: int) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import tapernn as tn
    from tapernn import blas_tuning, nn
    from tapernn.backends import background
    from tapernn.nn import auto_plans

    if arm == "main":
        background.held = contextlib.nullcontext
    compiled, counts = [0.0, 0.0], []
    make, next_count = auto_plans.TwoPlans._compile, blas_tuning._Arm.next_count

    def timed(self, trace):
        w, c = time.perf_counter(), time.thread_time()
        make(self, trace)
        compiled[:] = time.perf_counter() - w, time.thread_time() - c

    def counted(self):
        counts.append(next_count(self))
        return counts[-1]

    auto_plans.TwoPlans._compile, blas_tuning._Arm.next_count = timed, counted
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.float32)
    rng = np.random.default_rng(0)
    x, g = (rng.standard_normal((T, B, H)).astype(np.float32) for _ in range(2))
    window, pool = 0.0, 0
    for call in range(1, switch + 1):
        counts.clear()
        w, c = time.perf_counter(), time.thread_time()
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)
        w, c = (time.perf_counter() - w) * 1e3, (time.thread_time() - c) * 1e3
        if call == start:
            row = f"start call {w:7.1f}/{c:6.1f} (compile {compiled[0] * 1e3:6.1f}/"
            row += f"{compiled[1] * 1e3:6.1f})"
        elif start < call < switch:
            window += w
            pool += max(counts, default=1) > 1
        elif call == switch:
            row += f"  window {switch - start - 1} calls {window:8.1f} ({pool} with the pool's"
            row += f" BLAS threads)  switch {w:7.1f}  load {os.getloadavg()[0]:.1f}"
    print(f"{arm}: {row}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="3,30")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--shape", default="50,32,256")
    ap.add_argument("--child", default="")
    a = ap.parse_args()
    start, switch = map(int, a.counts.split(","))
    if a.child:
        child(a.child, start, switch, *map(int, a.shape.split(",")))
        return
    for _ in range(a.reps):
        for arm in ("main", "held"):
            cache = tempfile.mkdtemp(prefix="htrace-cache-")
            env = dict(os.environ, TAPERNN_KERNEL_CACHE=cache, TAPERNN_AUTO_PLANS=a.counts)
            cmd = [sys.executable, __file__, "--child", arm, "--counts", a.counts]
            subprocess.run([*cmd, "--shape", a.shape], env=env, check=True)
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
