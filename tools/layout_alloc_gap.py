"""hchoice: the feature-major step at (4, 50, 256) f32 depends on the process's allocation history.
argv[1]: the models built, in order, from batch, feature, auto ("auto" is faked to pick feature-major
with no trial). Per model: training step and time inside compiled programs, process CPU, 10 interleaved
reps at one BLAS thread, medians. Found: "batch,feature" gives feature ~1.2x batch; "batch,feature,auto"
gives all three equal (load ~10). Run: PYTHONPATH=. python tools/layout_alloc_gap.py batch,feature,auto"""

import os
import sys
import time

os.environ["TAPERNN_LAYOUT_CACHE"] = "off"
import numpy as np

import tapernn as tn
from tapernn import executor, nn
from tapernn.blas import limiter
from tapernn.passes import layout_rule

tn.set_backend("numpy")
B, T, H = 4, 50, 256
dt = np.float32
layout_rule._TIMER[:] = [lambda *a: [(1.0, 0.5)] * 3]  # auto: clear feature, no trial compile
layout_rule.gemm_times = lambda *a: (1.0, 0.5)
x = (np.random.default_rng(0).standard_normal((T, B, H)) * 0.1).astype(dt)
g = np.ones((T, B, H), dt)
acc = [0.0]
orig = executor.Compiled.run


def run(self, args):
    t = time.process_time()
    r = orig(self, args)
    acc[0] += time.process_time() - t
    return r


executor.Compiled.run = run


def model(l):
    tn.manual_seed(0)
    return nn.Sequencer(nn.FastLSTM(H, H)).astype(dt).set_plan_options(tn.PlanOptions(layout=l))


order = sys.argv[1].split(",")
ms = {l: model(l) for l in order}
res = {l: [] for l in ms}
with limiter.limit(1):
    for l, m in ms.items():
        for _ in range(3):
            m.forward(x)
            m.backward(x, g)
    for r in range(10):
        for l in order if r % 2 == 0 else order[::-1]:
            m = ms[l]
            acc[0] = 0
            t = time.process_time()
            m.forward(x)
            m.backward(x, g)
            tot = time.process_time() - t
            res[l].append((tot, acc[0]))
for name, v in res.items():
    step = np.median([a for a, _ in v]) * 1e3
    inside = np.median([b for _, b in v]) * 1e3
    layout = ms[name]._runtime.last.options.layout
    print(f"{name} ({layout}): step {step:.2f} ms, in programs {inside:.2f} ms")
print(os.getloadavg()[0])
