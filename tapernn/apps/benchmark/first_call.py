"""The numba backend's first call: a fresh interpreter builds Sequencer(FastLSTM(256, 256)) and
runs one (32, 50, 256) float32 training step, once with an empty kernel cache (cold: every
kernel compiled) and once with the cache the first run left (warm: kernels loaded)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, time
t0 = time.perf_counter()
import numba  # noqa: F401
t1 = time.perf_counter()
import numpy as np
import tapernn as tn
from tapernn import nn
tn.set_backend("numba")
B, T, H = 32, 50, 256
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, H)).astype(np.float32)
g = rng.standard_normal((T, B, H)).astype(np.float32)
t2 = time.perf_counter()
seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.float32)
seq.forward(x); seq.zero_grad_parameters(); seq.backward(x, g)
t3 = time.perf_counter()
seq.forward(x); seq.zero_grad_parameters(); seq.backward(x, g)
t4 = time.perf_counter()
rep = seq.compile_report()
print(json.dumps({"import_numba": t1 - t0, "first_step": t3 - t2, "second_step": t4 - t3,
                  "kernels": rep.compiled_kernels, "fallbacks": len(rep.fallbacks)}))
"""


def first_call_times() -> list[tuple[str, dict]]:
    root = Path(__file__).resolve().parents[3]
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TAPERNN_KERNEL_CACHE=cache, PYTHONPATH=str(root))
        for label in ("cold (empty kernel cache)", "warm (kernel cache on disk)"):
            run = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                                 text=True, check=True)
            out.append((label, json.loads(run.stdout.strip().splitlines()[-1])))
    return out


def run_first_call() -> None:
    print("\nnumba first call, (32, 50, 256) float32 FastLSTM, fresh interpreter "
          "(build + compile + first training step; numba import separately):")
    for label, r in first_call_times():
        print(f"  {label:<28} first step {r['first_step']:7.2f} s   numba import "
              f"{r['import_numba']:5.2f} s   next step {r['second_step'] * 1e3:7.1f} ms   "
              f"{r['kernels']} kernels, {r['fallbacks']} on NumPy")
