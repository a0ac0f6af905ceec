import sys, time, resource
import numpy as np
from tapernn import nn
T = int(sys.argv[1]); unroll = len(sys.argv) > 2
m = nn.Sequencer(nn.LSTM(8, 8), unroll=unroll)
x = np.random.default_rng(0).standard_normal((T, 2, 8))
t0 = time.perf_counter()
y = m.forward(x); m.backward(x, np.ones_like(y))
dt = time.perf_counter() - t0
print(f"T={T} first fwd+bwd {dt:.2f}s peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1e3:.0f} MB")
t0 = time.perf_counter()
y = m.forward(x); m.backward(x, np.ones_like(y))
print(f"second {time.perf_counter()-t0:.3f}s")
