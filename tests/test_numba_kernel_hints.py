"""numba's performance hints about tapernn's own generated kernels are not shown to users
(numba_setup.quiet_kernel_hints): a loop kernel multiplying a step's slice of a stacked input
(`np.dot(arg[t].T, ...)` on an "A"-layout array) made numba print "np.vdot() is faster on
contiguous arrays" with the kernel file's line -- noise a user cannot act on (found by
tools/fuzz_cells.py on numba, stop 51). A user's own numba function keeps its hints.

Each check compiles the same function from a file named like a tapernn kernel and from one
named like a user's module, in a fresh interpreter with default warning filters."""

import subprocess
import sys
from pathlib import Path

import pytest

from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import importlib.util, sys
from pathlib import Path
import numpy as np
from tapernn.backends import numba_setup

if sys.argv[2] == "setup":
    numba_setup.setup()
path = Path(sys.argv[1])
path.write_text(
    "import numpy as np\\nfrom numba import njit\\n\\n@njit\\ndef f(a, b, out):\\n"
    "    np.dot(a.T, b, out)\\n"
)
spec = importlib.util.spec_from_file_location(path.stem, path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
a = np.ones((4, 6))[:, ::2]  # an "A"-layout operand: numba copies it and says so
out = np.empty((3, 5))
module.f(a, np.ones((4, 5)), out)
assert np.allclose(out, 4.0)
"""


def _stderr(path: Path, setup: bool) -> str:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), "setup" if setup else "none"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stderr


def test_a_kernels_performance_hint_is_dropped_after_setup(tmp_path):
    kernel = tmp_path / "tapernn_k6_0123456789abcdef0123.py"
    assert "NumbaPerformanceWarning" in _stderr(kernel, setup=False)  # numba does say it
    assert "NumbaPerformanceWarning" not in _stderr(kernel, setup=True)


def test_a_users_own_numba_function_keeps_its_hint(tmp_path):
    assert "NumbaPerformanceWarning" in _stderr(tmp_path / "my_cells.py", setup=True)
