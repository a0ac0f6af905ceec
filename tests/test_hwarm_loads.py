"""A warm first call loads numba's cached kernels without numba's target refresh
(numba_setup.loads_unrefreshed, issue 19's warm-cache first call): in a fresh interpreter a
kernel loaded from the disk cache leaves the registries only a compile reads unimported, runs
the same bits, and a compile after it (the user's own njit code) still finds every registry;
an unchecked numba release loads as numba always does."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
ROOT = Path(__file__).resolve().parents[1]
# modules only numba's target refresh imports (numba.core.cpu.load_additional_registries)
REFRESH_ONLY = ("numba.typed.typeddict", "numba.np.polynomial.polynomial_core", "numba.np.npyimpl")

_CHILD = """
import json, sys
import numpy as np
import tapernn as tn
version = sys.argv[1]
if version:
    import numba
    numba.__version__ = version
x = np.linspace(-2, 2, 12).reshape(3, 4)
c = tn.compile(tn.trace(lambda a: tn.tanh(a) * a + a, x), backend="numba")
got = c(x)
assert c.report.compiled_kernels == 1 and not c.report.fallbacks, c.report.fallbacks
loaded = [m for m in sys.argv[2].split(",") if m in sys.modules]
from numba import njit, typed, types
@njit
def poly(d, a):  # a compile after the loads: typed dicts and polyadd need the registries
    d[1] = 2.5
    return np.polynomial.polynomial.polyadd(a, a)[0] + np.median(a) + d[1]
d = typed.Dict.empty(types.int64, types.float64)
user = poly(d, np.array([1.0, -2.0, 3.0]))
print(json.dumps({"got": got.tolist(), "loaded": loaded, "user": user}))
"""


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")  # the first run compiles, the next ones load


def _run(kernels, version=""):
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        TAPERNN_KERNEL_CACHE=str(kernels),
        TAPERNN_NUMBA_BACKGROUND="0",
    )
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, version, ",".join(REFRESH_ONLY)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_warm_load_leaves_the_compile_only_registries_unimported(kernels):
    """Fails before the change: numba's load refreshed its target (all three imported)."""
    import numpy as np

    cold = _run(kernels)  # compiles (and so refreshes)
    warm = _run(kernels)
    assert warm["loaded"] == []
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    np.testing.assert_allclose(warm["got"], np.tanh(x) * x + x, rtol=1e-12)
    assert warm["got"] == cold["got"]  # the same bits, loaded or compiled
    assert warm["user"] == cold["user"] == 2.0 + 1.0 + 2.5


def test_an_unchecked_numba_release_loads_as_numba_does(kernels):
    _run(kernels)  # (warm for the next)
    r = _run(kernels, version="0.99.0")
    assert r["loaded"] == list(REFRESH_ONLY)  # numba's own load: its refresh ran


def test_another_targets_load_is_numbas_own():
    """The wrapper stands aside for a context that is not numba's CPU one (its refresh
    runs, then numba's load)."""
    from numba.core import caching

    from tapernn.backends.numba_setup import setup

    setup()
    calls = []

    class Other:
        def refresh(self):
            calls.append("refresh")

    class Cache:
        load_overload = caching.Cache.load_overload

        def _guard_against_spurious_io_errors(self):
            return contextlib.nullcontext()

        def _load_overload(self, sig, ctx):
            calls.append("load")
            return "loaded"

    assert Cache().load_overload((), Other()) == "loaded"
    assert calls == ["refresh", "load"]
