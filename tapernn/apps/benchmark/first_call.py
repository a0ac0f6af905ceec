"""The numba backend's first calls: a fresh interpreter imports tapernn, builds
Sequencer(FastLSTM(H, H)) and runs float32 training steps, on the NumPy backend, and on numba with
the kernels compiled in the background (the default: step 1 -- every call of each program before
the switch call -- on NumPy, step 2 waits for the kernels) or at each group's first call
(TAPERNN_NUMBA_BACKGROUND=0), and on "auto" (the library's default: NumPy for these short runs),
each with an empty kernel cache (cold) and with the cache a previous run left (warm): the first three steps at (32, 50, 256) (wall, and the main thread's
CPU: the rest of the process's is the compiler thread's), and whole 100-step runs (process
start to the last step) at (32, 50, 256) and (1, 5, 5) -- what decides the default backend
(tapernn/backends/__init__.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, sys, time
start = time.perf_counter()
import numpy as np
import tapernn as tn
from tapernn import nn
backend, (B, T, H), n = sys.argv[1], map(int, sys.argv[2].split(",")), int(sys.argv[3])
tn.set_backend(backend)
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, H)).astype(np.float32)
g = rng.standard_normal((T, B, H)).astype(np.float32)
seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.float32)
steps, main_cpu = [], []
for _ in range(n):
    t, c = time.perf_counter(), time.thread_time()
    seq.forward(x); seq.zero_grad_parameters(); seq.backward(x, g)
    steps.append(time.perf_counter() - t)
    main_cpu.append(time.thread_time() - c)
rep = seq.compile_report()
print(json.dumps({"steps": steps[:3], "main_cpu": main_cpu[:3], "total": time.perf_counter() - start,
                  "cpu": time.process_time(), "kernels": rep.compiled_kernels + rep.loop_compiled_kernels,
                  "fallbacks": len(rep.fallbacks), "numba_imported": "numba" in sys.modules}))
"""

# (label, TAPERNN_NUMBA_BACKGROUND, backend); a "cold" run starts a new kernel cache, a "warm"
# one reuses the previous run's
RUNS = [
    ("numpy", "1", "numpy"),
    ("numba, background, cold", "1", "numba"),
    ("numba, background, warm", "1", "numba"),
    ("numba, at first call, cold", "0", "numba"),
    ("numba, at first call, warm", "0", "numba"),
    ("auto (the default), cold", "1", "auto"),
    ("auto (the default), warm", "1", "auto"),
]
SIZES = ((32, 50, 256), (1, 5, 5))


def _child(backend: str, background: str, cache: str, size: tuple, steps: int) -> dict:
    root = Path(__file__).resolve().parents[3]
    env = dict(
        os.environ,
        TAPERNN_KERNEL_CACHE=cache,
        PYTHONPATH=str(root),
        TAPERNN_NUMBA_BACKGROUND=background,
    )
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, backend, ",".join(map(str, size)), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def first_call_times(size: tuple = (32, 50, 256), steps: int = 3) -> list[tuple[str, dict]]:
    out = []
    cache = ""
    for label, background, backend in RUNS:
        if label.endswith("cold") or backend == "numpy":
            cache = tempfile.mkdtemp(prefix="tapernn-kernels-")
        out.append((label, _child(backend, background, cache, size, steps)))
    return out


def run_first_call() -> None:
    print(
        "\nfirst calls, (32, 50, 256) float32 FastLSTM training step, fresh interpreter "
        "(build + trace + compile + step), wall (main thread's CPU):"
    )
    for label, r in first_call_times():
        steps = "  ".join(f"{s:5.2f} s ({c:4.2f})" for s, c in zip(r["steps"], r["main_cpu"]))
        print(
            f"  {label:<28} steps 1-3 {steps}   {r['kernels']} kernels, "
            f"{r['fallbacks']} groups on NumPy"
        )
    print("\n100-step runs, float32 FastLSTM, fresh interpreter (start to last step; CPU s):")
    for size in SIZES:
        for label, r in first_call_times(size, 100):
            print(f"  {size!s:<14} {label:<28} {r['total']:7.2f} s  cpu {r['cpu']:7.2f} s")
