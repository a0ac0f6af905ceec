"""Probe for the warm price's fix (issue 19, BENCHMARKS.md "hwarm3"): can a CACHED numba loop
kernel call the cblas GEMM NumPy's matmul calls (blas_gemm.functions(): scipy-openblas64's
ILP64 cblas_?gemm64_), so that a step loop could run before the packed driver exists, with
np.matmul's bits? A ctypes function as a global is not cacheable (numba: "dynamic globals");
an intrinsic calling the function's ADDRESS passed as an int64 argument is (no address in the
cached code). Prints: bits equal to np.matmul (C and F-order weights), cache hits/misses.

Run twice (the second run must hit): `python tools/cblas_from_numba.py` ($NUMBA_CACHE_DIR,
default /tmp/tapernn_cblas_probe)."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/tapernn_cblas_probe")  # (before numba's import)

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from tapernn import blas_gemm


@intrinsic
def gemm_at(typingctx, fn, tb, m, n, k, a, lda, b, ldb, c, ldc, dummy):
    """cblas_dgemm64_(RowMajor, NoTrans, tb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc) at fn
    (dummy: an array of the dtype, which picks s or d)."""
    real = ir.FloatType() if dummy.dtype == types.float32 else ir.DoubleType()
    i64 = types.int64
    ptr = types.intp
    sig = types.void(i64, i64, i64, i64, i64, ptr, i64, ptr, i64, ptr, i64, dummy)

    def codegen(context, builder, signature, args):
        fn, tb, m, n, k, a, lda, b, ldb, c, ldc, _ = args
        i32, i64_, p = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        kinds = [i32, i32, i32, i64_, i64_, i64_, real, p, i64_, p, i64_, real, p, i64_]
        f = builder.inttoptr(fn, ir.FunctionType(ir.VoidType(), kinds).as_pointer())
        row_major, no_trans = ir.Constant(i32, 101), ir.Constant(i32, 111)
        one, zero = ir.Constant(real, 1.0), ir.Constant(real, 0.0)
        ptrs = [builder.inttoptr(v, p) for v in (a, b, c)]
        tb32 = builder.trunc(tb, i32)
        call = [row_major, no_trans, tb32, m, n, k, one, ptrs[0], lda, ptrs[1], ldb, zero]
        builder.call(f, call + [ptrs[2], ldc])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def gemm(fn, a, w, out, w_transposed):  # (w_transposed: w's data is the (n, k) C array)
    m, k, n = a.shape[0], a.shape[1], out.shape[1]
    tb, ldb = (112, k) if w_transposed else (111, n)
    gemm_at(fn, tb, m, n, k, a.ctypes.data, k, w.ctypes.data, ldb, out.ctypes.data, n, a)


def main() -> None:
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        addr = ctypes.cast(blas_gemm.functions()[np.dtype(dt)], ctypes.c_void_p).value
        a = rng.standard_normal((32, 256)).astype(dt)
        for transposed in (False, True):
            w = rng.standard_normal((1024, 256) if transposed else (256, 1024)).astype(dt)
            wt = w.T if transposed else w
            out = np.empty((32, 1024), dt)
            gemm(addr, a, w, out, transposed)
            same = np.array_equal(out, np.matmul(a, wt))
            print(
                f"{np.dtype(dt)} weight {'F' if transposed else 'C'}-order: np.matmul's bits {same}"
            )
    print(
        f"cache hits {sum(gemm.stats.cache_hits.values())}, misses {sum(gemm.stats.cache_misses.values())}"
    )


if __name__ == "__main__":
    main()
