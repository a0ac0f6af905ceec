"""The numba backend's float32 tanh (tapernn/backends/vecmath.py): against float64 NumPy rounded
to float32 over a dense grid (every float32 magnitude from subnormals to the largest, the
saturation region), signed zeros, NaN and +-Inf; and the generated loop is vectorised."""

import re

import numpy as np
import pytest

import tapernn as tn
from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


def _ulps(a, b):
    ia, ib = (v.view(np.int32).astype(np.int64) for v in (a, b))
    ia, ib = (np.where(i < 0, -(i & 0x7FFFFFFF), i) for i in (ia, ib))
    return np.abs(ia - ib)


def _grid():
    f32 = np.float32
    dense = np.linspace(-12, 12, 1_000_001, dtype=f32)
    magnitudes = np.logspace(-45.5, 38.5, 400_000).astype(f32)
    special = np.array([0.0, 1e-45, 1.2e-38, 3e-4, 9.0, 9.01, 9.75, 3.4e38], f32)
    x = np.concatenate([dense, magnitudes, special])
    return np.concatenate([x, -x, np.array([np.inf, -np.inf, np.nan], f32)])


def test_float32_tanh_within_one_ulp_of_float64_rounded_to_float32():
    x = _grid()
    c = tn.compile(tn.trace(lambda a: tn.tanh(a) * 1.0, x), backend="numba")
    assert c.report.compiled_kernels == 1 and not c.report.fallbacks  # lowered, not on NumPy
    assert (
        "np.tanh"
        not in c.program.fn.__kwdefaults__[
            next(k for k in c.program.fn.__kwdefaults__ if k.startswith("nk"))
        ].handle.kernel.py_func.__code__.co_names  # a call site, bound to the kernel once called
    )
    got = c(x)
    assert got.dtype == np.float32
    want = np.tanh(x.astype(np.float64)).astype(np.float32)
    finite = np.isfinite(x)
    assert _ulps(got[finite], want[finite]).max() <= 1
    assert (_ulps(got[finite], want[finite]) > 0).mean() < 1e-3  # nearly always correctly rounded
    np.testing.assert_array_equal(got[~finite], np.tanh(x[~finite]))  # +-1 at +-Inf, NaN
    zeros = x == 0
    np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(x[zeros]))  # tanh(-0) = -0
    tiny = (np.abs(x) < 1e-4) & finite
    np.testing.assert_array_equal(got[tiny], x[tiny])  # tanh(x) = x to float32 precision


def test_float32_tanh_loop_is_vectorised(tmp_path, monkeypatch):
    from tapernn.backends import numba_backend

    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))  # compiled here: inspectable
    monkeypatch.setattr(numba_backend, "_kernels", {})
    x = np.linspace(-3, 3, 64, dtype=np.float32)
    c = tn.compile(tn.trace(lambda a: tn.tanh(a) * 2.0, x), backend="numba")
    c(x)  # compiled at the first call, for the types it passes
    kernel = next(v for k, v in c.program.fn.__kwdefaults__.items() if k.startswith("nk"))
    asm = "\n".join(kernel.inspect_asm().values())
    assert re.search(r"\bv?\w+pd\s+.*%[xyz]mm", asm)  # packed double arithmetic: SIMD
    assert "tanh" not in asm  # no libm call left
