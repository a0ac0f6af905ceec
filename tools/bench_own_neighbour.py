"""The owned step beside 2-thread OpenBLAS work in the same process (BENCHMARKS.md "hown"):
`alone` times the FastLSTM (32, 50, 256) f32 step (numba, defaults: owned) 15 times; `mixed`
runs three (1600, 1024) @ (1024, 1024) products at the pool's threads right before each step
(no rest). Prints the step's median and each thread's CPU per iteration (/proc/self/task).

Run: PYTHONPATH=$PWD python tools/bench_own_neighbour.py alone mixed alone mixed
"""

import os
import sys
import time

import numpy as np

import tapernn as tn
from tapernn import nn

tn.set_backend("numba")
B, T, H = 32, 50, 256
x = np.random.randn(T, B, H).astype("f4")
g = np.random.randn(T, B, H).astype("f4")
tn.manual_seed(0)
own = nn.Sequencer(nn.FastLSTM(H, H))
a = np.random.randn(1600, 1024).astype("f4")
b = np.random.randn(1024, 1024).astype("f4")


def step():
    own.forward(x)
    own.zero_grad_parameters()
    own.backward(x, g)


for _ in range(10):
    step()


def tasks():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        out[tid] = int(v[11]) + int(v[12])
    return out


REST = 0.0  # seconds between the products and the step
for mode in sys.argv[1:]:
    ws = []
    t0 = tasks()
    for _ in range(15):
        if mode == "mixed":
            for _ in range(3):
                a @ b  # 2 BLAS threads (the pool as it is)
            time.sleep(REST)
        t = time.perf_counter()
        step()
        ws.append(time.perf_counter() - t)
    t1 = tasks()
    print(
        mode,
        "owned step median",
        np.median(ws) * 1e3,
        {k: (t1[k] - t0.get(k, 0)) * 10 / 15 for k in t1 if t1[k] - t0.get(k, 0) > 0},
    )
