"""numba's first-use setup without its scipy.linalg import (tapernn/backends/numba_setup.py):
in a fresh interpreter a numba kernel loads without importing scipy.linalg, numba's BLAS
check still answers as numba's own would when a user's jitted code asks for it, and a numba
release the deferral was not checked against sets up as numba always does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys
import numpy as np
import tapernn as tn
version = sys.argv[1]
if version:
    import numba
    numba.__version__ = version
x = np.linspace(-2, 2, 12).reshape(3, 4)
c = tn.compile(tn.trace(lambda a: a * a + a, x), backend="numba")
np.testing.assert_allclose(c(x), x * x + x, rtol=1e-12)
assert c.report.compiled_kernels == 1 and not c.report.fallbacks
scipy_after_kernel = "scipy.linalg" in sys.modules
from numba import njit
from numba.np import arraymath
deferred = type(arraymath._HAVE_BLAS).__name__
if not version:
    a, b = np.arange(7.0), np.array([0.5, -1.0, 2.0])
    got = njit(lambda a, b: np.correlate(a, b))(a, b)  # numba asks for its BLAS check here
    np.testing.assert_allclose(got, np.correlate(a, b), rtol=1e-12)
print(json.dumps({"scipy_after_kernel": scipy_after_kernel, "deferred": deferred,
                  "have_blas": bool(arraymath._HAVE_BLAS), "numba_own": arraymath._check_blas(),
                  "scipy_at_end": "scipy.linalg" in sys.modules}))
"""


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")  # both runs: one compile, one load


def _run(kernels, version=""):
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        TAPERNN_KERNEL_CACHE=str(kernels),
        TAPERNN_NUMBA_BACKGROUND="0",
    )
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, version],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_kernel_loads_without_scipy_and_numbas_blas_check_still_answers(kernels):
    r = _run(kernels)
    assert not r["scipy_after_kernel"]  # numba set up without importing scipy.linalg
    assert r["deferred"] == "DeferredBlasCheck"
    assert r["have_blas"] == r["numba_own"]  # the deferred check is numba's own answer
    assert r["scipy_at_end"] == r["numba_own"]  # ... run when the user's code asked


def test_an_unchecked_numba_release_sets_up_as_usual(kernels):
    r = _run(kernels, version="0.99.0")
    assert r["deferred"] == "bool"  # numba's own check ran at setup
    assert r["scipy_after_kernel"] == r["have_blas"] == r["numba_own"]


def test_deferred_check_runs_once_and_keeps_the_answer():
    from tapernn.backends.numba_setup import DeferredBlasCheck

    calls = []
    check = DeferredBlasCheck(lambda: calls.append(1) or True)
    assert "unchecked" in repr(check) and not calls
    assert check and check and calls == [1]
    assert bool(DeferredBlasCheck(lambda: False)) is False


_ORDER = """
import json, sys
from numba.core import compiler_lock
from numba.core.registry import cpu_target
from tapernn.backends import numba_setup
seen = []
lock = compiler_lock.global_compiler_lock
real = type(lock).__enter__
def enter(self):  # (whether numba's target context existed when setup took the lock)
    if sys._getframe(1).f_code is numba_setup.setup.__code__:
        seen.append("_toplevel_target_context" in vars(cpu_target))
    return real(self)
type(lock).__enter__ = enter
numba_setup.setup()
print(json.dumps(seen))
"""


def test_setup_makes_the_target_context_before_it_takes_the_compiler_lock():
    """numba's first @njit takes the target context's lock, then the compiler lock; setup took
    them the other way round (the lock, then the context) -- a first update_parameters' njit
    on the caller while the background compiler's setup ran hung both threads (2 runs in 3 of
    a (32, 50, 256) numba training loop). Fails before the fix: the context made inside."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TAPERNN_NUMBA_BACKGROUND="0")
    out = subprocess.run(
        [sys.executable, "-c", _ORDER], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen and all(seen)
