"""A user's training loop with no backend chosen: "auto" (two plans, nn.auto_plans: NumPy's
until the switch call, numba's after) against PlanOptions(backend="numpy") -- what "auto" ran
before for a model with no loop small enough for a loop kernel -- and backend="numba", at
Sequencer(FastLSTM(H, H)) f32, (T, B). Per arm, in one process: the first `--first` calls one
at a time (caller thread CPU, process CPU, which counts the numba worker's compiles, and wall),
then interleaved steady rounds (median thread CPU per step). Prints the gradients' largest
relative difference between arms after the same steps from the same seed. `--start/--switch`
set $TAPERNN_AUTO_PLANS (default: auto_plans' START, SWITCH). `--eval`: forward-only calls in
evaluation mode, interleaved, numpy against numba.

Run: PYTHONPATH=$PWD python tools/hauto_bench.py --first 120 --rounds 8
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import tapernn as tn
from tapernn import nn
from tapernn.nn import auto_plans


def make(arm: str, H: int, x, g):
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.float32)
    seq.set_plan_options(tn.PlanOptions(backend=arm))

    def step():
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    return seq, step


def timed(step) -> tuple[float, float, float]:
    t0, p0, w0 = time.thread_time(), time.process_time(), time.perf_counter()
    step()
    return time.thread_time() - t0, time.process_time() - p0, time.perf_counter() - w0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=50)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--start", type=int, default=auto_plans.START)
    ap.add_argument("--switch", type=int, default=auto_plans.SWITCH)
    ap.add_argument("--first", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--arms", default="numpy,auto,numba")
    ap.add_argument("--eval", action="store_true")
    a = ap.parse_args()
    os.environ["TAPERNN_AUTO_PLANS"] = f"{a.start},{a.switch}"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.T, a.B, a.H)).astype(np.float32)
    g = rng.standard_normal((a.T, a.B, a.H)).astype(np.float32)
    arms = a.arms.split(",")
    models, steps = {}, {}
    for arm in arms:
        models[arm], steps[arm] = make(arm, a.H, x, g)
        if a.eval:
            models[arm].evaluate()
            steps[arm] = lambda seq=models[arm]: seq.forward(x)
        rows = [timed(steps[arm]) for _ in range(a.first)]
        th = np.array([r[0] for r in rows]) * 1e3
        pr = np.array([r[1] for r in rows]) * 1e3
        wall = np.array([r[2] for r in rows]) * 1e3
        print(
            f"{arm:6s} first {a.first}: thread {th.sum():.0f} ms, process {pr.sum():.0f} ms; "
            f"call 1 {th[0]:.0f}/{pr[0]:.0f}; largest {th.argmax() + 1}: {th.max():.0f}/"
            f"{pr[th.argmax()]:.0f}; calls 2-{a.start - 1} median {np.median(th[1 : a.start - 1]):.1f}; "
            f"{a.start + 1}-{a.switch - 1} median {np.median(th[a.start : a.switch - 1]):.1f}; "
            f"after {a.switch} median {np.median(th[a.switch :]):.1f}",
            flush=True,
        )
        if arm == "auto" and not a.eval:
            span = slice(a.start - 3, a.switch + 3)
            print("    calls", span.start + 1, "..:", " ".join(f"{v:.0f}" for v in th[span]))
            print(
                f"    wall: start call {wall[a.start - 1]:.0f} ms, switch call "
                f"{wall[a.switch - 1]:.0f} ms, first {a.first} calls {wall.sum():.0f} ms"
            )
    tn.backends.wait_for_kernels()
    per = {arm: [] for arm in arms}
    for r in range(a.rounds):
        order = arms if r % 2 == 0 else arms[::-1]
        for arm in order:
            for _ in range(3):
                per[arm].append(timed(steps[arm])[0] * 1e3)
    print(f"steady ({a.rounds} rounds x 3, thread CPU ms/step, load {os.getloadavg()[0]:.1f}):")
    for arm in arms:
        v = np.array(per[arm])
        print(f"  {arm:6s} median {np.median(v):.2f}  min {v.min():.2f}")
    ref = models[arms[0]].parameters()
    for arm in arms[1:]:
        rel = max(
            np.abs(p0.grad - p1.grad).max() / max(np.abs(p0.grad).max(), 1e-30)
            for p0, p1 in zip(ref, models[arm].parameters())
        )
        print(f"  grads {arm} vs {arms[0]}: largest rel diff {rel:.2e}")


if __name__ == "__main__":
    main()
