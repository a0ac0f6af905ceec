import time, cProfile, pstats, numpy as np
from tapernn import nn
H = 256
m = nn.Sequencer(nn.LSTM(H, H)).astype(np.float32)
for T in (50, 73):
    x = np.random.default_rng(0).standard_normal((T, 32, H)).astype(np.float32)
    t0 = time.perf_counter()
    if T == 73:
        pr = cProfile.Profile(); pr.enable()
    y = m.forward(x); m.backward(x, np.ones_like(y))
    print(T, time.perf_counter() - t0)
pr.disable()
pstats.Stats(pr).sort_stats('cumtime').print_stats(25)
