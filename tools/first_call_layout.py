"""One process: first forward+backward of Sequencer(LSTM(H)) (T, B, H) with an empty layout cache.
argv: root B T H dtype [backend] [cell]"""

import os
import sys
import time

os.environ["TAPERNN_LAYOUT_CACHE"] = "off"
root, B, T, H, dt = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
backend = sys.argv[6] if len(sys.argv) > 6 else ""
cell = sys.argv[7] if len(sys.argv) > 7 else "LSTM"
sys.path.insert(0, root)
import numpy as np

import tapernn as tn
from tapernn import nn

assert tn.__file__.startswith(root), tn.__file__
if backend:
    tn.set_backend(backend)
dtype = np.dtype(dt)
tn.manual_seed(0)
m = nn.Sequencer(getattr(nn, cell)(H, H)).astype(dtype)
x = (np.random.default_rng(0).standard_normal((T, B, H)) * 0.1).astype(dtype)
g = np.ones((T, B, H), dtype)
t0 = time.perf_counter()
c0 = time.process_time()
m.forward(x)
m.backward(x, g)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
notes = [n for n in m.compile_report().notes if n.startswith("layout")]
t1 = time.perf_counter()
m.forward(x)
m.backward(x, g)
second = time.perf_counter() - t1
print(f"{wall:.3f} {cpu:.3f} {second:.3f} | {notes[0][:400] if notes else '-'}")
