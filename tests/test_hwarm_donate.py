"""donate.py's view-index arrays (issue 19's warm first call): one caller's asks share the
flat index array of each base size -- FastLSTM (32, 50, 256) asked 31 times over 2 sizes, each
a fresh np.arange of 1.6-2.5 M elements, ~18 % of a first call's CPU -- and the donations
planned are those made with an array per ask (each arm in a fresh interpreter: a process
compiles a structure once)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CHILD = """
import json, sys
import numpy as np
import tapernn as tn
from tapernn import donate, nn
made, real, asker = [], np.arange, donate._values.__code__
def counting(*args, **kwargs):
    if sys._getframe(1).f_code is asker:
        made.append(args[0])
    return real(*args, **kwargs)
np.arange = counting
if sys.argv[1] == "each":  # every ask its own array, as before the change
    values = donate._values
    donate._values = lambda v, base, indices=None: values(v, base)
plans, found = [], donate.donations
def recording(graph, root, donate_):
    out = found(graph, root, donate_)
    plans.append(sorted([s.size, inp.size] for s, inp in out.items()))
    return out
donate.donations = recording
tn.set_backend("numpy")
tn.manual_seed(0)
m = nn.Sequencer(nn.FastLSTM(16, 16))
x = np.random.default_rng(0).standard_normal((6, 4, 16))
y = m.forward(x)
gi = m.backward(x, np.ones_like(y))
print(json.dumps({"made": made, "plans": plans, "y": y.tobytes().hex(), "gi": gi.tobytes().hex()}))
"""


def _run(arm):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, arm], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_shared_index_arrays_one_per_size_and_caller_and_the_same_donations():
    """Fails before the change: one array per ask (31 for 2 sizes at (32, 50, 256))."""
    shared, each = _run("shared"), _run("each")
    made = shared["made"]
    assert made, "the compile asked for no view indices (the test no longer sees them)"
    # donatable and donations each share theirs; tail_gemms / tail_temp_bytes ask once each
    assert len(made) <= 2 * len(set(made)) + 3 < len(each["made"]), (made, each["made"])
    assert shared["plans"] == each["plans"] and any(shared["plans"])
    assert shared["y"] == each["y"] and shared["gi"] == each["gi"]  # the same bits
