"""numba below -O3 (tapernn/backends/numba_opt.py; the suite's -O0, conftest): in fresh
interpreters, a program whose kernel calls vecmath's njit functions, and a rolled training step,
compile in the first process and load every kernel from the cache in the second (0 compiles),
with -O3's bits; -O0 and -O3 kernels
never share a cache entry, neither in tapernn's kernel cache nor in numba's index of any other
function; and a numba without the internals the wrappers expect runs, uncached, and says why."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
ROOT = Path(__file__).resolve().parents[1]

# (before every child's code: the functions numba compiles in it, `compiles`)
_COUNT = """
import hashlib, json, sys
from numba.core import event
compiles = []
class Count(event.Listener):
    def on_start(self, ev): pass
    def on_end(self, ev): compiles.append(ev.data["dispatcher"].py_func.__name__)
event.register("numba:compile", Count())
"""
_PROGRAM = """
import numpy as np
import tapernn as tn
from tapernn.backends import numba_backend, numba_update
x = np.linspace(-2, 2, 12).reshape(3, 4)
c = tn.compile(tn.trace(lambda a: tn.tanh(a * a + a) * tn.sigmoid(a), x), backend="numba")
want = np.tanh(x * x + x) / (1 + np.exp(-x))
np.testing.assert_allclose(c(x), want, rtol=1e-12)
assert c.report.compiled_kernels == 1 and not c.report.fallbacks, c.report
data, step = np.arange(5.0), np.full(5, 2.0)
numba_update.sub_scaled(data, step, 0.25)  # (package-level: the package's __pycache__)
assert data.tolist() == [-0.5, 0.5, 1.5, 2.5, 3.5], data
print(json.dumps({"compiles": compiles, "dir": str(numba_backend.cache_dir())}))
"""


def _child(code, level, **env):
    """The JSON the child prints last, and its stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_OPT=level, **env)
    argv = [sys.executable, "-c", _COUNT + code]
    out = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def _run(code, cache, level):
    return _child(code, level, TAPERNN_KERNEL_CACHE=str(cache), TAPERNN_NUMBA_BACKGROUND="0")[0]


def test_a_kernel_calling_others_is_cached_at_O0_and_apart_from_O3(tmp_path):
    cache = tmp_path / "kernels"
    first = _run(_PROGRAM, cache, "0")
    # the kernel, its vecmath callees (tanh, sigmoid) -- and nothing else of tapernn's
    assert "kernel" in first["compiles"] and len(first["compiles"]) >= 3, first
    assert first["dir"] == str(cache / "opt0")
    again = _run(_PROGRAM, cache, "0")
    assert again["compiles"] == [], again  # every kernel loaded from the cache
    o3 = _run(_PROGRAM, cache, "3")
    assert o3["dir"] == str(cache)  # (numba's default: the cache directory itself)
    assert "kernel" in o3["compiles"], o3  # never the -O0 machine code
    assert _run(_PROGRAM, cache, "3")["compiles"] == []
    assert _run(_PROGRAM, cache, "0")["compiles"] == []  # (-O3's entries did not displace)
    names = {p.name for p in (cache / "opt0" / "__pycache__").glob("*.nbi")}
    assert names == {p.name for p in (cache / "__pycache__").glob("*.nbi")}, names


_TRAINING = """
import numpy as np
import tapernn as tn
from tapernn import nn
tn.set_backend("numba")
tn.manual_seed(0)
seq = nn.Sequencer(nn.GRU(3, 4), unroll=False)
x = np.random.default_rng(0).standard_normal((5, 2, 3))
bits = hashlib.sha256()
for _ in range(3):
    y = seq.forward(x)
    seq.zero_grad_parameters()
    gx = seq.backward(x, np.cos(y))
    for a in [y, gx] + [p.grad for p in seq.parameters()]:
        bits.update(np.ascontiguousarray(a).tobytes())
print(json.dumps({"compiles": compiles, "bits": bits.hexdigest()}))
"""


def test_a_rolled_training_step_loads_every_kernel_at_O0_with_O3s_bits(tmp_path):
    """A rolled GRU's training step on numba (whole-program kernels calling loop kernels,
    vecmath's functions, numba_update.add_flat): the second -O0 process compiles nothing, and
    -O0 and -O3 give the same bits (outputs, input and parameter gradients, three steps)."""
    cache = tmp_path / "kernels"
    first = _run(_TRAINING, cache, "0")
    assert len(first["compiles"]) >= 4, first
    again = _run(_TRAINING, cache, "0")
    assert again["compiles"] == [], again
    o3 = _run(_TRAINING, cache, "3")
    assert o3["bits"] == first["bits"] == again["bits"]


_USER = """
sys.path.insert(0, sys.argv[1])
from tapernn.backends.numba_opt import keyed
keyed()
import users_kernels
assert users_kernels.twice(3.0) == 6.0
print(json.dumps({"compiles": compiles}))
"""


def test_numbas_index_is_keyed_by_the_level_for_any_function(tmp_path):
    """A user's own cache=True function in a process where tapernn runs below -O3: its -O0
    entry sits beside the -O3 one in numba's index (same file), and neither loads the other."""
    (tmp_path / "users_kernels.py").write_text(
        "from numba import njit\n\n\n@njit(cache=True)\ndef twice(x):\n    return 2.0 * x\n"
    )
    code = _USER.replace("sys.argv[1]", repr(str(tmp_path)))
    run = [_run(code, tmp_path / "k", level)["compiles"] for level in ("3", "0", "3", "0")]
    assert run == [["twice"], ["twice"], [], []]


_BROKEN = """
import json, logging
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
from numba.core import codegen
del codegen.{name}
from tapernn.backends import numba_opt, numba_update
print(json.dumps({{"keyed": numba_opt.keyed(), "state": numba_opt._state,
                  "cache": type(numba_update.sub_scaled._cache).__name__}}))
"""


@pytest.mark.parametrize("name", ["CPUCodegen", "CPUCodeLibrary"])
def test_numba_internals_not_as_expected_patch_nothing_and_say_so(tmp_path, name):
    got, log = _child(_BROKEN.format(name=name), "0", TAPERNN_KERNEL_CACHE=str(tmp_path))
    if name == "CPUCodegen":  # not keyed: tapernn's own functions are not disk-cached
        assert got == {
            "keyed": False,
            "state": {"keyed": False, "dce": False},
            "cache": "NullCache",
        }
        assert "numba's cache is not keyed by -O0" in log, log
    else:  # keyed, but kernels that call others stay uncached (numba's own check)
        assert got == {
            "keyed": True,
            "state": {"keyed": True, "dce": False},
            "cache": "FunctionCache",
        }
        assert "numba kernels that call others are not cached below -O3" in log, log
