"""The numba backend's first calls: a fresh interpreter builds Sequencer(FastLSTM(256, 256)) and
runs three (32, 50, 256) float32 training steps, on the NumPy backend, and on numba with the
kernels compiled in the background (the default: step 1 on NumPy, step 2 waits for the kernels)
or before the first step (TAPERNN_NUMBA_BACKGROUND=0), each with an empty kernel cache (cold)
and with the cache a previous run left (warm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, sys, time
import numpy as np
import tapernn as tn
from tapernn import nn
tn.set_backend(sys.argv[1])
B, T, H = 32, 50, 256
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, H)).astype(np.float32)
g = rng.standard_normal((T, B, H)).astype(np.float32)
seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.float32)
steps = []
for _ in range(3):
    t = time.perf_counter()
    seq.forward(x); seq.zero_grad_parameters(); seq.backward(x, g)
    steps.append(time.perf_counter() - t)
rep = seq.compile_report()
print(json.dumps({"steps": steps, "kernels": rep.compiled_kernels,
                  "fallbacks": len(rep.fallbacks), "numba_imported": "numba" in sys.modules}))
"""

RUNS = [
    ("numpy", "1", "numpy"),
    ("numba, background, cold", "1", "numba"),
    ("numba, background, warm", "1", "numba"),
    ("numba, before step 1, cold", "0", "numba"),
    ("numba, before step 1, warm", "0", "numba"),
]


def first_call_times() -> list[tuple[str, dict]]:
    root = Path(__file__).resolve().parents[3]
    out = []
    for label, background, backend in RUNS:
        if label.endswith("cold") or backend == "numpy":
            cache = tempfile.mkdtemp(prefix="tapernn-kernels-")
        env = dict(
            os.environ,
            TAPERNN_KERNEL_CACHE=cache,
            PYTHONPATH=str(root),
            TAPERNN_NUMBA_BACKGROUND=background,
        )
        run = subprocess.run(
            [sys.executable, "-c", _CHILD, backend],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out.append((label, json.loads(run.stdout.strip().splitlines()[-1])))
    return out


def run_first_call() -> None:
    print(
        "\nfirst calls, (32, 50, 256) float32 FastLSTM training step, fresh interpreter "
        "(build + trace + compile + step):"
    )
    for label, r in first_call_times():
        steps = "  ".join(f"{s:6.2f} s" for s in r["steps"])
        print(
            f"  {label:<28} steps 1-3 {steps}   {r['kernels']} kernels, "
            f"{r['fallbacks']} groups on NumPy"
        )
