"""One fresh process: each of the first 5 forward+backward calls of Sequencer(<cell>(H, H)) f64,
timed as wall / main-thread CPU / process CPU, plus the wall time the main thread spent in
threading.Event.wait (numba's switch call waiting for the background worker). Run it in a
loop of fresh processes (BENCHMARKS.md, "hqa8"):

    for i in $(seq 10); do python tools/first_calls_fresh.py 32 50 256 numba; done

argv: B T H backend|default [cell] [blas_threads]; $FIRST_CALLS (default 5) calls: past the
5th only those that waited 0.05 s or more are shown (the packed call's wait: "c<n> w<s>")."""

import os
import sys
import threading
import time

waited = [0.0]
_wait = threading.Event.wait


def _timed_wait(self, timeout=None):
    t = time.perf_counter()
    try:
        return _wait(self, timeout)
    finally:
        if threading.current_thread() is threading.main_thread():
            waited[0] += time.perf_counter() - t


threading.Event.wait = _timed_wait
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B, T, H = map(int, sys.argv[1:4])
backend = sys.argv[4]
cell = sys.argv[5] if len(sys.argv) > 5 else "FastLSTM"

import numpy as np

import tapernn as tn
from tapernn import nn

if len(sys.argv) > 6:
    tn.set_blas_threads(int(sys.argv[6]))
if backend != "default":
    tn.set_backend(backend)
tn.manual_seed(0)
m = nn.Sequencer(getattr(nn, cell)(H, H))
x = np.random.default_rng(0).standard_normal((T, B, H)) * 0.1
g = np.ones((T, B, H))
row = []
for call in range(1, int(os.environ.get("FIRST_CALLS", "5")) + 1):
    waited[0] = 0.0
    w0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
    m.forward(x)
    m.backward(x, g)
    w, c, p = time.perf_counter() - w0, time.thread_time() - c0, time.process_time() - p0
    if call <= 5:
        row.append(f"{w:.3f}/{c:.3f}/{p:.3f}/w{waited[0]:.3f}")
    elif waited[0] >= 0.05:
        row.append(f"c{call} {w:.3f}/{c:.3f}/{p:.3f}/w{waited[0]:.3f}")
print(f"load {os.getloadavg()[0]:.1f} | " + "  ".join(row), flush=True)
