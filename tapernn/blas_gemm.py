"""C = alpha * A @ B + beta * C by the cblas GEMM of the OpenBLAS NumPy calls, through ctypes
(issue 19, BENCHMARKS.md "hblas"): np.matmul always asks for beta = 0, for which OpenBLAS first
writes zeros over C and then accumulates into it; a GEMM onto C prefilled with a bias, beta = 1,
makes that pass the bias's broadcast copy and saves the separate add's pass over C."""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from . import blas, tuning

# cblas' own numbers (cblas.h)
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
# the ILP64 builds' names (NumPy's and SciPy's wheels: scipy-openblas64), whose ints are 64-bit: a
# plain `cblas_sgemm` may take 32- or 64-bit ints (its name does not say), so it is not called
_NAMES = {
    np.dtype(np.float32): ("scipy_cblas_sgemm64_", "cblas_sgemm64_"),
    np.dtype(np.float64): ("scipy_cblas_dgemm64_", "cblas_dgemm64_"),
}
# callers (own_threads) call `gemm_bias` from this many bytes of C: its checks and the ctypes call
# cost ~11 us more than np.matmul + np.add's calls; one thread, load 5, (m, 256) x (256, 1024),
# the median step broke even at 128 K elements f32 and 32-64 K f64 (BENCHMARKS.md "hblas")
MIN_BYTES = 1 << 19
CALLS = [0]  # GEMMs run here so far (tests: the path ran)

_found: dict | None = None
_lock = threading.Lock()


def functions() -> dict:
    """dtype -> the GEMM function of the first OpenBLAS in the process that exports both
    (empty: none does, or not Linux); looked up once."""
    global _found
    with _lock:
        if _found is None:
            _found = _look_up()
        return _found


def _look_up() -> dict:
    for path in blas.openblas_paths():
        try:
            lib = ctypes.CDLL(path)  # (a CDLL's calls release the GIL: the halves run at once)
        except OSError:
            continue
        fns = {}
        for dtype, names in _NAMES.items():
            name = next((n for n in names if hasattr(lib, n)), None)
            if name is None:
                break
            scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
            fn = getattr(lib, name)
            i64, ptr = ctypes.c_int64, ctypes.c_void_p
            fn.argtypes = [ctypes.c_int] * 3 + [i64] * 3 + [scalar, ptr, i64, ptr, i64]
            fn.argtypes += [scalar, ptr, i64]
            fn.restype = None
            fns[dtype] = fn
        if len(fns) == len(_NAMES):
            return fns
    return {}


def layout(x: np.ndarray) -> tuple[int, int] | None:
    """(NO_TRANS or TRANS, leading dimension) of 2-D `x` as a row-major cblas operand: rows or
    columns one element apart, the other stride a whole number of elements covering them;
    None when it is neither (negative or broken strides)."""
    rows, cols = x.shape
    s0, s1 = x.strides
    size = x.itemsize
    if (s1 == size or cols == 1) and (rows == 1 or (s0 >= cols * size and s0 % size == 0)):
        return NO_TRANS, s0 // size if rows > 1 else cols
    if (s0 == size or rows == 1) and (cols == 1 or (s1 >= rows * size and s1 % size == 0)):
        return TRANS, s1 // size if cols > 1 else rows
    return None


def gemm(a, b, c, beta: float = 1.0, alpha: float = 1.0) -> bool:
    """c = alpha * a @ b + beta * c in place by the BLAS; True when done, False (c untouched:
    the caller runs np.matmul) unless `call` takes (a, b, c)."""
    run = call(a, b, c)
    if run is None:
        return False
    run(alpha, beta)
    return True


def gemm_bias(a, b, bias, out) -> bool:
    """out = a @ b + bias (`bias` one row over out's columns, 1-D) as the bias copied into out
    and the GEMM accumulated onto it (beta = 1): True when done, False (out untouched) when
    `bias_call` would not take (a, b, bias, out). Each element is rounded as the kernel adds its
    sums onto the bias -- not the bits of (a @ b) + bias, one add after the GEMM's zero-started
    sums."""
    run = bias_call(a, b, bias, out)
    if run is None:
        return False
    np.copyto(out, bias)
    run(1.0, 1.0)
    return True


def bias_call(a, b, bias, out):
    """`call(a, b, out)` where `bias` is also one row over out's columns (1-D, out's dtype)
    sharing no memory with the operands or out; else None (`gemm_bias` would not run)."""
    if (
        getattr(bias, "ndim", 0) != 1
        or getattr(out, "ndim", 0) != 2
        or bias.shape[0] != out.shape[1]
        or bias.dtype != out.dtype
        or any(np.may_share_memory(bias, v) for v in (a, b, out))
    ):
        return None
    return call(a, b, out)


def call(a, b, c):
    """run(alpha, beta): c = alpha * a @ b + beta * c by the BLAS, or None when a, b, c are not
    2-D arrays of one float32 / float64 dtype whose GEMM the library runs (`functions`), of
    matching non-empty shapes, aligned, a and b row-major or transposed (`layout`), c row-major
    and writeable, sharing no memory with a or b -- and no np.errstate of the user's asking to
    raise (`tuning.errors_asked`: np.matmul runs there, whose float flags NumPy checks)."""
    if not (type(a) is type(b) is type(c) is np.ndarray) or tuning.errors_asked():
        return None
    if a.ndim != 2 or b.ndim != 2 or c.ndim != 2 or not a.dtype == b.dtype == c.dtype:
        return None
    fn = functions().get(c.dtype)
    m, k = a.shape
    n = b.shape[1]
    if fn is None or b.shape[0] != k or c.shape != (m, n) or min(m, n, k) < 1:
        return None
    if not (a.flags.aligned and b.flags.aligned and c.flags.aligned and c.flags.writeable):
        return None
    la, lb, lc = layout(a), layout(b), layout(c)
    if la is None or lb is None or lc is None or lc[0] != NO_TRANS:
        return None
    if np.may_share_memory(c, a) or np.may_share_memory(c, b):
        return None
    pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data

    def run(alpha: float, beta: float) -> None:
        fn(ROW_MAJOR, la[0], lb[0], m, n, k, alpha, pa, la[1], pb, lb[1], beta, pc, lc[1])
        with _lock:  # (both halves' threads count)
            CALLS[0] += 1

    return run
