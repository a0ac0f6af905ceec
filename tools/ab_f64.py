"""A/B of branch hf64 (issue 19): the (B, T, H) float64 FastLSTM training step, numba backend,
default options, in ONE process, arms interleaved: "main" (float64 exp/tanh/sigmoid through
numba's scalar libm and the lone tanh a NumPy ufunc, as before hf64: its halves' loops stay in
Python), "vec" (vecmath's float64 lines, step loops off: Python halves), "new" (both: each
half's loop one numba call), and torch nn.LSTM float32. Each arm one thread (the split worker
replaced by an inline executor, as tools/parts_loop.py: thread CPU of the step and of its split
loops) and owned (two threads: wall and process CPU). The settings hold for each arm's every
call (its kernels are compiled at its own first calls: TAPERNN_NUMBA_BACKGROUND=0).

Run: PYTHONPATH=$PWD python tools/ab_f64.py --configs 32,50,256 --reps 9
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["TAPERNN_NUMBA_BACKGROUND"] = "0"
import numpy as np
from ab_common import training_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from parts_loop import ACC, Inline, instrument

from tapernn import fused_lowering, own_threads, scan_split
from tapernn.backends import numba_backend

VEC64, LONE64 = dict(numba_backend.VECTOR_FLOAT64), fused_lowering.NUMBA_LONE_OPS["float64"]


def settings(mode):
    numba_backend.VECTOR_FLOAT64 = {} if mode == "main" else VEC64
    fused_lowering.NUMBA_LONE_OPS["float64"] = ("sigmoid",) if mode == "main" else LONE64
    scan_split.STEP_LOOPS[0] = mode == "new"


def tn_step(x, g, H, mode):
    return training_step(x, g, H, lambda: settings(mode))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--batch", type=int, default=3)
    args = ap.parse_args()
    instrument()
    from proto_own import torch_step

    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        rng = np.random.default_rng(0)
        x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
        arms, models = {}, {}
        for mode in ("main", "vec", "new"):
            arms[mode], models[mode] = tn_step(x, g, H, mode)
            for _ in range(5):
                arms[mode]()
        arms["torch"] = torch_step(B, T, H, "float32", x.astype(np.float32), g.astype(np.float32))
        for _ in range(5):
            arms["torch"]()
        grads = {k: [p.grad.copy() for p in m.parameters()] for k, m in models.items()}
        print("vec == new bit for bit:", all(map(np.array_equal, grads["vec"], grads["new"])))
        print(
            "main vs new max |diff| of gradients:",
            max(float(np.max(np.abs(a - b))) for a, b in zip(grads["main"], grads["new"])),
        )
        for k in ("main", "new"):
            print(f"  {k}:", [r.kernel[-50:] for r in models[k].compile_report().loops])
        res = {}
        real_exec = own_threads.executor
        for _ in range(args.reps):
            for k, f in arms.items():
                for inline in (False, True) if k != "torch" else (False,):
                    time.sleep(0.1)
                    if inline:
                        own_threads.executor = lambda: Inline()
                    ACC.clear()
                    c, tc, t = time.process_time(), time.thread_time(), time.perf_counter()
                    for _ in range(args.batch):
                        f()
                    n = args.batch
                    row = res.setdefault((k, inline), ([], [], [], []))
                    row[0].append((time.perf_counter() - t) / n)
                    row[1].append((time.thread_time() - tc) / n)
                    row[2].append((time.process_time() - c) / n)
                    row[3].append(ACC.get("loops", 0.0) / n)
                    own_threads.executor = real_exec
        base = np.median(res[("torch", False)][0])
        for (k, inline), (w, tcpu, pcpu, loops) in res.items():
            if inline:
                print(
                    f"({B},{T},{H}) f64 {k:5s} one thread: thread CPU {np.median(tcpu) * 1e3:6.2f}"
                    f" ms (best {min(tcpu) * 1e3:6.2f}), its split loops {np.median(loops) * 1e3:6.2f}"
                )
            else:
                print(
                    f"({B},{T},{H}) {'f32' if k == 'torch' else 'f64'} {k:5s} owned: wall"
                    f" {np.median(w) * 1e3:7.2f} ms (best {min(w) * 1e3:7.2f}), process CPU"
                    f" {np.median(pcpu) * 1e3:6.2f} = {np.median(w) / base:.3f}x torch f32"
                )
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
