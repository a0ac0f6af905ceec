"""One fresh process of hchoice's measurement (issue 19): Sequencer(FastLSTM(H, H)) with
layout "auto" and an empty layout cache trains `steps` steps (so a close decision's re-check on
the real programs can run: nn/layout_recheck); prints the first pick, the layout it runs after
the steps, the notes, and (unless argv[7] == "0") the training step with each layout forced,
interleaved, at one BLAS thread, process CPU time, medians. One JSON line.
argv: root backend B T H dtype [forced reps (0: none)] [steps]"""

import json
import os
import sys
import time

os.environ["TAPERNN_LAYOUT_CACHE"] = "off"
root, backend = sys.argv[1], sys.argv[2]
B, T, H = map(int, sys.argv[3:6])
dt = sys.argv[6]
reps = int(sys.argv[7]) if len(sys.argv) > 7 else 5
steps = int(sys.argv[8]) if len(sys.argv) > 8 else 16
sys.path.insert(0, root)
import numpy as np

import tapernn as tn
from tapernn import nn
from tapernn.blas import limiter

assert tn.__file__.startswith(root), tn.__file__
tn.set_backend(backend)
dtype = np.dtype(dt)
x = (np.random.default_rng(0).standard_normal((T, B, H)) * 0.1).astype(dtype)
g = np.ones((T, B, H), dtype)


def model(layout):
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
    return m.set_plan_options(tn.PlanOptions(layout=layout))


def step(m):
    m.forward(x)
    m.backward(x, g)


load0 = os.getloadavg()[0]
m = model("auto")
t0 = time.perf_counter()
step(m)
first_call = time.perf_counter() - t0
notes = [n for n in m.compile_report().notes if n.startswith("layout")]
first = "F" if notes and "feature-major (auto" in notes[0] else "B"
for _ in range(steps - 1):
    step(m)
final = m._runtime.last.options.layout[0].upper()
notes = [n for n in m.compile_report().notes if n.startswith("layout")]
out = {
    "first": first,
    "final": final,
    "first_call_s": round(first_call, 3),
    "notes": notes,
    "load": [round(load0, 2)],
}
if reps:
    ms = {k: model(k) for k in ("batch", "feature")}
    with limiter.limit(1):
        for mm in ms.values():
            step(mm)
            step(mm)
        times = {k: [] for k in ms}
        for r in range(reps):
            for k in ("batch", "feature") if r % 2 == 0 else ("feature", "batch"):
                c = time.process_time()
                step(ms[k])
                times[k].append(time.process_time() - c)
    out["batch_ms"] = round(float(np.median(times["batch"])) * 1e3, 2)
    out["feature_ms"] = round(float(np.median(times["feature"])) * 1e3, 2)
out["load"].append(round(os.getloadavg()[0], 2))
print(json.dumps(out))
