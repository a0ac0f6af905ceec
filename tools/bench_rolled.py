"""Rolled Sequencer benchmarks (issue 16), run by `python tools/bench_compiler.py --rolled`: each
measurement in a fresh interpreter. (1) first forward+backward of Sequencer(LSTM(8, 8)), B = 2,
at T = 10 .. 20,000: time and peak RSS above the interpreter's baseline (tapernn imported);
(2) compile of Sequencer(LSTM(256)) fwd+bwd in float32 at T = 50, then T = 73 (the default
program; no step re-trace: trace_count), as the first call minus a steady call; (3) steady-state
training step, rolled vs unroll=True interleaved in one process (CPU time, min over reps: the
machine is shared), at (32, 50, 256), (32, 50, 512), (1, 5, 5) and (1, 50, 5) float32 LSTM, and
(1, 5, 5) FastLSTM and GRU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_FIRST = """
import json, resource, sys, time
import numpy as np
import tapernn
from tapernn import nn
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
T, unroll = int(sys.argv[1]), sys.argv[2] == "1"
m = nn.Sequencer(nn.LSTM(8, 8), unroll=unroll)
x = np.random.default_rng(0).standard_normal((T, 2, 8))
t0 = time.perf_counter()
y = m.forward(x)
m.backward(x, np.ones_like(y))
first = time.perf_counter() - t0
t0 = time.perf_counter()
y = m.forward(x)
m.backward(x, np.ones_like(y))
again = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"first": first, "again": again, "mb": (peak - base) / 1024,
                  "base_mb": base / 1024}))
"""

_COMPILE = """
import json, sys, time
import numpy as np
from tapernn import nn
H = 256
m = nn.Sequencer(nn.LSTM(H, H)).astype(np.float32)
out = {}
for T in (50, 73):
    x = np.random.default_rng(0).standard_normal((T, 32, H)).astype(np.float32)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        y = m.forward(x)
        m.backward(x, np.ones_like(y))
        times.append(time.perf_counter() - t0)
    out[T] = times[0] - min(times[1:])
out["trace_count"] = m.trace_count
print(json.dumps(out))
"""

_STEADY = """
import json, sys, time
import numpy as np
from tapernn import nn
B, T, H = map(int, sys.argv[1:4])
cell = getattr(nn, sys.argv[4] if len(sys.argv) > 4 else "LSTM")
x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
g = np.ones((T, B, H), np.float32)
steps = {}
for unroll in (False, True):
    m = nn.Sequencer(cell(H, H), unroll=unroll).astype(np.float32)
    def step(m=m):
        m.zero_grad_parameters(); y = m.forward(x); m.backward(x, g); m.update_parameters(0.01)
    step(); step()
    steps["unrolled" if unroll else "rolled"] = step
reps = max(3, int(0.3 / max(1e-4, _t(steps["rolled"]))))
out = {k: 1e9 for k in steps}
for _ in range(5):  # interleaved rounds
    for k, step in steps.items():
        out[k] = min(out[k], min(_t(step) for _ in range(reps)))
print(json.dumps(out))
"""
_STEADY = _STEADY.replace(
    "from tapernn import nn\n",
    "from tapernn import nn\n"
    "def _t(f):\n    t0 = time.process_time(); f(); "
    "return time.process_time() - t0\n",
    1,
)


def _run(code: str, *args: str, timeout: float = 900) -> dict:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        timeout=timeout,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rolled_main(lengths: tuple = (10, 1_000, 10_000, 20_000), unrolled_up_to: int = 1_000) -> int:
    print(f"load average: {os.getloadavg()}")
    print("first forward+backward of Sequencer(LSTM(8, 8)), B = 2 (fresh interpreter each):")
    print(
        f"{'T':>8}{'program':>10}{'first s':>10}{'again s':>10}{'compile s':>11}"
        f"{'MB above base':>15}"
    )
    for T in lengths:
        for unroll in (False, True):
            if unroll and T > unrolled_up_to:
                continue
            r = _run(_FIRST, str(T), "1" if unroll else "0")
            if "error" in r:
                print(f"{T:>8}{'unrolled' if unroll else 'rolled':>10}  error: {r['error']}")
                continue
            print(
                f"{T:>8}{'unrolled' if unroll else 'rolled':>10}{r['first']:>10.2f}"
                f"{r['again']:>10.3f}{r['first'] - r['again']:>11.3f}{r['mb']:>15.0f}"
            )
    r = _run(_COMPILE)
    print(
        f"\nSequencer(LSTM(256)) f32, B = 32, default program, fwd+bwd compile (first call "
        f"minus a steady call): T = 50 {r.get('50', float('nan')):.3f} s, then T = 73 "
        f"{r.get('73', float('nan')):.3f} s; trace_count {r.get('trace_count')}"
    )
    print(
        "\nsteady-state training step (zero_grad, forward, backward, update), CPU time, min "
        "over 5 interleaved rounds:"
    )
    cases = [(shape, "LSTM") for shape in ((32, 50, 256), (32, 50, 512), (1, 5, 5), (1, 50, 5))]
    cases += [((1, 5, 5), "FastLSTM"), ((1, 5, 5), "GRU")]
    for shape, cell in cases:
        r = _run(_STEADY, *map(str, shape), cell)
        if "error" in r:
            print(f"  {cell} (B, T, H) = {shape}: error: {r['error']}")
            continue
        print(
            f"  {cell} (B, T, H) = {shape}: rolled {r['rolled'] * 1e3:.2f} ms, unrolled "
            f"{r['unrolled'] * 1e3:.2f} ms, rolled / unrolled {r['rolled'] / r['unrolled']:.2f}"
        )
    print(f"load average: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(rolled_main())
