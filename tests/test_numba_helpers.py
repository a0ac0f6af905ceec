"""The generated numba kernels call vecmath's exp / tanh / sigmoid as @njit helpers of one module
(written to the kernel cache directory) instead of carrying their lines inline at every use:
fewer lines for numba to type and lower per kernel (BENCHMARKS.md hcold2, CI with a cold kernel
cache, second pass), the same bits as the inline form."""

import numpy as np
import pytest

from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")

# sigmoid(x) -> tanh -> * x1 -> exp: every helper of the dtype in one group
_PROGRAM = (
    ("sigmoid", (0,), (), (64, 300), "{dt}"),
    ("tanh", (-1,), (), (64, 300), "{dt}"),
    ("mul", (-2, 1), (), (64, 300), "{dt}"),
    ("exp", (-3,), (), (64, 300), "{dt}"),
)


def _program(dt):
    return tuple(
        (op, refs, attrs, shape, d.format(dt=dt)) for op, refs, attrs, shape, d in _PROGRAM
    )


def _values(dt):
    rng = np.random.default_rng(5)
    x = np.concatenate(
        [
            np.linspace(-120, 100, 64 * 300 - 12),
            [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -1e-30, 0.625, -0.625, 10.0, 22.0, -88.7],
        ]
    )
    x = x.astype(dt).reshape(64, 300)
    y = rng.uniform(-1, 1, (64, 300)).astype(dt)
    return x, y


def _kernel(monkeypatch, tmp_path, dt, calls):
    from tapernn.backends import numba_backend, vecmath

    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(numba_backend, "_kernels", {})
    monkeypatch.setattr(vecmath, "CALLS", calls)
    operands = [((64, 300), np.dtype(dt)), ((64, 300), np.dtype(dt))]
    source = numba_backend.kernel_source(_program(dt), operands, (64, 300))
    kernel, why = numba_backend.get_kernel(_program(dt), operands, (64, 300), np.dtype(dt))
    assert kernel is not None, why
    return kernel, source


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_kernels_call_the_helpers_and_give_the_inline_forms_bits(dt, tmp_path, monkeypatch):
    from tapernn.backends import vecmath

    x, y = _values(dt)
    called, text = _kernel(monkeypatch, tmp_path / "calls", dt, True)
    prefix = "vm" if dt == "float32" else "vd"
    body = text[text.index("def kernel") :]
    for name in ("sigmoid", "tanh", "exp"):  # a call each, no inline polynomial
        assert f"{prefix}_{name}(" in body
    assert "EP0" not in body and "LOG2E" not in body
    import sys
    from pathlib import Path

    # written to a kernel cache directory (this test's, unless an earlier test loaded it)
    helpers = Path(sys.modules[vecmath.HELPERS_MODULE].__file__)
    assert helpers.name == f"{vecmath.HELPERS_MODULE}.py"
    assert helpers.read_text() == vecmath.HELPERS_SOURCE
    inline, text = _kernel(monkeypatch, tmp_path / "inline", dt, False)
    assert "EP0" in text[text.index("def kernel") :]  # (the old form, the reference here)
    a, b = np.empty_like(x), np.empty_like(x)
    called(x, y, a)
    inline(x, y, b)
    np.testing.assert_array_equal(a.view(f"i{a.itemsize}"), b.view(f"i{b.itemsize}"))
    # and against NumPy (an oracle sharing no code): the kernels' documented accuracy
    with np.errstate(over="ignore", invalid="ignore"):
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        want = np.exp(np.tanh(1 / (1 + np.exp(-x64))) * y64)
    np.testing.assert_allclose(a, want.astype(dt), rtol=4 * np.finfo(dt).eps)


def test_a_fresh_process_loads_the_helpers_and_kernels_from_the_cache(tmp_path):
    """A second process imports the helpers module the first wrote and loads the kernel from
    numba's cache (no compile)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import numpy as np, tapernn as tn\n"
        "from tapernn.backends import numba_backend\n"
        "x = np.linspace(-3, 3, 2048, dtype=np.float32)\n"
        "c = tn.compile(tn.trace(lambda a: tn.tanh(a) * tn.sigmoid(a) + tn.exp(a), x), backend='numba')\n"
        "c(x); y = c(x)\n"
        "k = next(iter(numba_backend._kernels.values()))\n"
        "print(k.kernel.stats.cache_hits and 'hit' or 'miss', float(y.sum()))\n"
    )
    env = dict(os.environ, TAPERNN_KERNEL_CACHE=str(tmp_path), PYTHONPATH=str(root))
    env["TAPERNN_NUMBA_BACKGROUND"] = "0"
    env.pop("NUMBA_CACHE_DIR", None)
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    first, second = (run.stdout.split() for run in runs)
    assert first[0] == "miss" and second[0] == "hit"
    assert first[1] == second[1]
