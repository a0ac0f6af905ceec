"""numba's BLAS check deferred by the first compile, not by numba_setup.setup
(numba_setup.deferred_at_first_compile, BENCHMARKS.md "hwarm2"): a process that only loads
cached kernels never imports numba.np.linalg / arraymath; one that compiles (the first run here,
or the user's own njit code after a load) gets the deferred check, numba's own answer when asked,
and scipy.linalg only then."""

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
x = np.linspace(-2, 2, 12).reshape(3, 4)
c = tn.compile(tn.trace(lambda a: tn.tanh(a) * a - a, x), backend="numba")
np.testing.assert_allclose(c(x), np.tanh(x) * x - x, rtol=1e-12)
assert c.report.compiled_kernels == 1 and not c.report.fallbacks, c.report.fallbacks
seen = {"after_kernel": [m for m in ("numba.np.linalg", "numba.np.arraymath", "scipy.linalg")
                         if m in sys.modules]}
from numba import njit
a, b = np.arange(7.0), np.array([0.5, -1.0, 2.0])
got = njit(lambda a, b: np.correlate(a, b))(a, b)  # a compile: numba asks for its BLAS check
np.testing.assert_allclose(got, np.correlate(a, b), rtol=1e-12)
from numba.np import arraymath
seen.update(deferred=type(arraymath._HAVE_BLAS).__name__, have_blas=bool(arraymath._HAVE_BLAS),
            numba_own=arraymath._check_blas())
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same script twice on one fresh kernel cache: the first compiles, the second loads."""
    kernels = tmp_path_factory.mktemp("kernels")
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        TAPERNN_KERNEL_CACHE=str(kernels),
        TAPERNN_NUMBA_BACKGROUND="0",
    )
    got = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        got.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return got


def test_a_load_imports_neither_linalg_nor_arraymath(runs):
    assert runs[1]["after_kernel"] == []  # (before: both, at setup)


def test_a_compile_gets_the_deferred_check_with_numbas_own_answer(runs):
    compiled = runs[0]
    assert "scipy.linalg" not in compiled["after_kernel"]  # (the check deferred, not run)
    for run in runs:  # (the user's compile after a load defers it as the first compile did)
        assert run["deferred"] == "DeferredBlasCheck"
        assert run["have_blas"] == run["numba_own"]
