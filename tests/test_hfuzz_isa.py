"""Non-finite and signed-zero operands through the numba kernels at the lengths where vector code
takes its remainder paths (hfuzz, the first session on an AVX2-only CPU; tools/fuzz_isa.py
fuzzes both at random): the packed GEMM of each geometry puts NaN and Inf where np.matmul does
(no zero of `a` or of the panels' padding may skip a product: 0 * Inf is NaN), and fused
elementwise kernels give the NumPy backend's NaN, Inf and zeros' signs, finite values within
1e-12 (float64) -- at 1, 3, 5, 7, 9, 17, 33, 255 and 257 elements, each remainder of 4 / 8 / 16
lanes and past them."""

import numpy as np
import pytest
from test_packed_gemm import within_rounding

import tapernn as tn
from tapernn.backends import numba_available, packed

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
LENGTHS = [1, 3, 5, 7, 9, 17, 33, 255, 257]
SPECIAL = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e300, -1e300, 5e-324, 1.0, -2.0, 700.0]
SPECIAL += [-745.5, 30.0, -30.0, 1e-20, -1e-20, 3.0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_packed_gemm_propagates_nan_and_inf_on_each_geometry(dtype, rng):
    key = ((np.dtype(dtype).str,),)
    for kind in sorted(packed.GEOMETRY):
        h = packed.handle(kind)
        h.prepare(key)
        assert h.has(key), h.error
        nr = packed.panel_width(dtype, kind)
        for m, k, n in [(1, 1, 1), (3, 7, nr + 1), (5, 33, 2 * nr - 1), (9, 130, 3 * nr + 5)]:
            a = rng.standard_normal((m, k)).astype(dtype)
            w = rng.standard_normal((k, n)).astype(dtype)
            a[m // 2, k // 2] = np.inf  # Inf times W's row: +-Inf, and NaN past the width?
            a[m - 1, 0] = 0.0  # a zero of `a` times an Inf of W: NaN, not skipped
            w[0, n - 1] = -np.inf
            w[k - 1, n // 2] = np.nan
            out = np.full((m, n), 7.0, dtype)
            packed.run_kernel(h.kernel, a, packed.pack_panels(w, nr=nr), out)
            with np.errstate(invalid="ignore"):
                want = a @ w
            np.testing.assert_array_equal(np.isnan(out), np.isnan(want), err_msg=kind)
            np.testing.assert_array_equal(out[np.isinf(want)], want[np.isinf(want)], kind)
            fin = np.isfinite(want)
            rows = fin.all(1)
            within_rounding(out[rows], a[rows], w)  # rows with no non-finite operand


FUNCTIONS = {
    "relu": lambda a, b: tn.relu(a) * 1.0,
    "maximum": lambda a, b: tn.maximum(a, b) * 1.0,
    "minimum": lambda a, b: tn.minimum(a, b) * 1.0,
    "where": lambda a, b: tn.where(a > b, a, b) * 1.0,
    "sigmoid_tanh": lambda a, b: tn.sigmoid(a) * tn.tanh(b),
    "exp_log": lambda a, b: tn.log(tn.exp(a) + tn.abs(b)),
    "sqrt": lambda a, b: tn.sqrt(tn.abs(a)) + b,
    "divide": lambda a, b: a / b,
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_fused_kernels_on_special_values_equal_the_numpy_backend(name, dtype):
    """Zeros' signs too: maximum / minimum of -0 and +0 (IEEE 754 leaves the sign open) gave
    the other zero than NumPy's on 3fd1ba7, in the scalar remainder and in part of the vector
    body; now NumPy's (a tie returns the second operand)."""
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for n in LENGTHS:
        rng = np.random.default_rng(n)
        with np.errstate(all="ignore"):  # (1e300 in float32: Inf)
            a, b = (rng.choice(SPECIAL, n).astype(dtype) for _ in range(2))
            g = tn.trace(FUNCTIONS[name], a, b)
            want = np.asarray(tn.compile(g, backend="numpy")(a, b))
            c = tn.compile(g, backend="numba")
            c(a, b)
            got = np.asarray(c(a, b))
        what = f"{name} at {n}"
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
        inf = np.isinf(want)
        np.testing.assert_array_equal(got[inf], want[inf], err_msg=what)
        fin = np.isfinite(want)
        scale = np.maximum(1.0, np.abs(want[fin].astype(np.float64)))
        assert np.all(np.abs(got[fin] - want[fin].astype(np.float64)) <= tol * scale), what
        zero = want == 0
        np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]), what)


def test_fast_fuzz_makes_cases_of_every_size_set():
    """tools/fuzz_fast.py --sizes wide / small: every case is made, the masked ones with B < 4
    too (zero_rows drew integers(1, B // 2): ValueError at B = 2, 3 ended the wide run)."""
    from fast_fuzz import SIZES, make_fast_case

    for sizes in SIZES:
        for seed in range(720000, 720200):
            case = make_fast_case(seed, sizes=sizes, mask_lengths=True)
            assert case.B in SIZES[sizes]["B"]
