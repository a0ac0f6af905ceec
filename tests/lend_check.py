"""Helpers shared by the tests of lending a weight's zeroed `.grad` as scratch
(test_weight_scratch.py, test_pack_scratch.py, test_split_lend.py, test_split_late.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tapernn.nn.packing import Packing


def seeded(make, seed: int = 0):
    """A module from `make()` with every parameter drawn N(0, 0.1^2) from its own seed."""
    m = make()
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(seed + k).standard_normal(p.shape) * 0.1
    return m


def data(shape: tuple, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(input, output gradient) of `shape`, standard normal from `seed`."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape)


def spy_lend(monkeypatch) -> list:
    """Per forward and backward from now on: the `.grad` arrays Packing lent to a loop's
    panels (the list returned)."""
    record = []
    real = Packing._lend

    def spy(self, entries, args, known=()):
        used = real(self, entries, args, known)
        record.append(used)
        return used

    monkeypatch.setattr(Packing, "_lend", spy)
    return record


_PEAK_SCRIPT = """
import json
import numpy as np
from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.nn.runtime import runtime_of
from tapernn.scan_split import SplitRunner
rng = np.random.default_rng(0)
x = rng.standard_normal(({T}, {B}, {H})).astype(np.float32)
g = rng.standard_normal(({T}, {B}, {H})).astype(np.float32)
seq = nn.{make}.astype("float32")
seq.set_plan_options(PlanOptions(backend="numba", layout="batch", **{options!r}))
real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
pair = runtime_of(seq).last.training_pair
calls = {{
    side: [r.split_calls for r in p.fn.__kwdefaults__.values() if isinstance(r, SplitRunner)]
    for side, p in (("forward", pair.forward.program), ("backward", pair.last_backward.program))
}}
print(json.dumps([real, seq.compile_report().peak_bytes, calls]))
"""


def fresh_loop_peak(make: str, T: int, B: int, H: int, options: dict) -> tuple[int, int, dict]:
    """(tracemalloc loop peak, compile report's peak, {"forward"/"backward": split calls of each
    SplitRunner in that program}) of `nn.<make>` in float32 on numba, measured in a fresh
    interpreter: tracemalloc traces every thread and object of the process, and full-suite
    workers' earlier tests left 0.5-1.5 MB in a split model's measured steps (stops 30 and 31;
    never reproduced with the file alone, a cold cache, or after its neighbouring files)."""
    code = _PEAK_SCRIPT.format(T=T, B=B, H=H, make=make, options=options)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    real, report, calls = json.loads(done.stdout.strip().splitlines()[-1])
    return real, report, calls
