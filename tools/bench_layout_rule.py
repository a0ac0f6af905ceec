"""hlayout measurement: per shape/dtype, 5 fresh 'auto' decisions (empty cache) and the whole
training step (forward + backward, Sequencer(FastLSTM), numpy backend) with each layout forced,
interleaved, CPU time, medians.
Usage: PYTHONPATH=. python tools/bench_layout_rule.py [backend] ["B,T,H;B,T,H"]"""

import os
import sys
import time

import numpy as np

os.environ["TAPERNN_LAYOUT_CACHE"] = "off"
import tapernn as tn
from tapernn import nn
from tapernn.blas import limiter
from tapernn.passes import layout_rule

tn.set_backend(sys.argv[1] if len(sys.argv) > 1 else "numpy")
SHAPES = (
    [tuple(map(int, s.split(","))) for s in sys.argv[2].split(";")]
    if len(sys.argv) > 2
    else [(16, 50, 128), (32, 50, 256), (32, 50, 512)]
)


def model(H, dt, layout):
    tn.manual_seed(0)
    return (
        nn.Sequencer(nn.FastLSTM(H, H)).astype(dt).set_plan_options(tn.PlanOptions(layout=layout))
    )


def step(m, x, g):
    m.forward(x)
    m.backward(x, g)


for B, T, H in SHAPES:
    for dt in (np.float32, np.float64):
        x = np.random.default_rng(0).standard_normal((T, B, H)).astype(dt) * 0.1
        g = np.ones((T, B, H), dt)
        picks, costs, ratios = [], [], []
        for _ in range(5):
            layout_rule._DECIDED.clear()
            m = model(H, dt, "auto")
            m.forward(x)
            (note,) = [n for n in m.compile_report().notes if n.startswith("layout")]
            if _ == 0:
                print(note, flush=True)
            picks.append("F" if "feature-major (auto" in note else "B")
            costs.append(
                float(note.split("deciding took ")[1].split(" s")[0])
                if "deciding took" in note
                else 0.0
            )
            if "x; feature" in note:
                ratios.append(note.split(" ms (")[1].split("x;")[0])
        ms = {lay: model(H, dt, lay) for lay in ("batch", "feature")}
        with limiter.limit(1):
            for m in ms.values():
                step(m, x, g)
                step(m, x, g)
            times = {k: [] for k in ms}
            for r in range(7):
                for k in ("batch", "feature") if r % 2 == 0 else ("feature", "batch"):
                    t = time.process_time()
                    step(ms[k], x, g)
                    times[k].append(time.process_time() - t)
        mb, mf = (np.median(times[k]) * 1e3 for k in ("batch", "feature"))
        print(
            f"{(B, T, H)} {np.dtype(dt).name}: auto picks {''.join(picks)} (trial ratios f/b {','.join(ratios)}; "
            f"deciding {min(costs):.2f}-{max(costs):.2f} s) | whole step batch {mb:.1f} ms, feature {mf:.1f} ms, f/b {mf / mb:.3f} | {os.getloadavg()[0]:.2f}",
            flush=True,
        )
