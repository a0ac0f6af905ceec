"""Standalone probe (issue 19): can a numba GEMM over a weight packed ONCE beat OpenBLAS at the
per-step recurrent shapes (M = 32..64 rows)?

The microkernel is tapernn/backends/packed_kernels.py's (LLVM IR through a numba @intrinsic:
MR rows of A times a packed panel of B, NV vectors of W lanes wide, W = 16 f32 / 8 f64 with
AVX-512, MR * NV vector accumulators in registers over the whole K loop) for several (MR, NV);
this driver is simpler than the package's (each row block of A packed k-major by an
element-wise copy, a zero-padded tile for ragged blocks); `parallel` splits the N panels over
numba's threads (prange). (Brought up to make_microkernel's current signature on branch hbig.)

Run: PYTHONPATH=$PWD python tools/gemm_probe.py [--threads 1 2] [--reps 200]
Prints GF/s of np.matmul (OpenBLAS), torch.mm and the probe side by side, interleaved (one
thread: timed in thread CPU time, which a loaded machine disturbs less; two: wall time).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit, prange

from tapernn.backends.packed_kernels import make_microkernel

VEC_BITS = 512


def _lanes(dtype) -> int:
    return VEC_BITS // (8 * np.dtype(dtype).itemsize)


def pack(b: np.ndarray, nv: int) -> np.ndarray:
    """(K, N) -> (ceil(N / NR), K, NR), NR = nv * lanes, zero-padded; 64-byte aligned."""
    k, n = b.shape
    nr = nv * _lanes(b.dtype)
    npan = -(-n // nr)
    size = npan * k * nr
    raw = np.empty(size + 64 // b.itemsize, b.dtype)
    start = (-raw.ctypes.data % 64) // b.itemsize
    out = raw[start : start + size].reshape(npan, k, nr)
    out[...] = 0
    for j in range(npan):
        w = min(nr, n - j * nr)
        out[j, :, :w] = b[:, j * nr : j * nr + w]
    return out


# the microkernel's p_off for a tile of nv vectors from `base` (nv prefetch offsets unused, the
# accumulate flag off: out = the sum)
_OFFSETS = {
    2: njit(lambda b, v: (b, b + v, 0, 0, 0)),
    3: njit(lambda b, v: (b, b + v, b + 2 * v, 0, 0, 0, 0)),
    4: njit(lambda b, v: (b, b + v, b + 2 * v, b + 3 * v, 0, 0, 0, 0, 0)),
}


def make_gemm(mr: int, nv: int, parallel: bool):
    """out[:M, :n] = a @ B, B packed (npan, K, NR); each row block of a packed k-major first
    (the kernel's layout: element (i, p) at p * mr + i); prange over the panels when
    `parallel`."""
    mk = make_microkernel(mr, nv, VEC_BITS)
    offsets = _OFFSETS[nv]

    def gemm(a, bp, n, out):
        m, k = a.shape
        npan, _, nr = bp.shape
        lanes = nr // nv
        bf, of = bp.ravel(), out.ravel()
        ldo = out.shape[1]
        for j in prange(npan):
            col = j * nr
            ta = np.zeros((k, mr), a.dtype)
            tc = np.zeros((mr, nr), a.dtype)
            taf, tcf = ta.ravel(), tc.ravel()
            for i in range(0, m, mr):
                rows = min(mr, m - i)
                for p in range(k):
                    for r in range(mr):
                        ta[p, r] = a[i + r, p] if r < rows else 0
                off = offsets(j * k * nr, lanes)
                if rows == mr and col + nr <= n:
                    mk(taf, 0, bf, off, of, i * ldo + col, ldo, k)
                    continue
                mk(taf, 0, bf, off, tcf, 0, nr, k)
                w = min(nr, n - col)
                for r in range(rows):
                    out[i + r, col : col + w] = tc[r, :w]
        return out

    return njit(parallel=parallel, nogil=True)(gemm)


def gflops(m, k, n, sec):
    return 2.0 * m * k * n / sec / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--blocks", default="8x2,8x3,4x4")
    ap.add_argument(
        "--shapes", default="32,256,1024 32,1024,256 32,512,2048 64,1024,4096 32,128,512"
    )
    args = ap.parse_args()
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    dt = np.dtype(args.dtype)
    blocks = [tuple(int(v) for v in b.split("x")) for b in args.blocks.split(",")]
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split()]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    kernels = {}
    for mr, nv in blocks:
        for par in (False, True):
            kernels[(mr, nv, par)] = make_gemm(mr, nv, par)
    for m, k, n in shapes[:1]:
        a = rng.standard_normal((m, k)).astype(dt)
        b = rng.standard_normal((k, n)).astype(dt)
        for (mr, nv, par), g in kernels.items():
            bp = pack(b, nv)
            out = np.empty((m, n), dt)
            g(a, bp, n, out)
    print(f"compile (all {len(kernels)} variants, first shape): {time.perf_counter() - t0:.1f} s")
    for threads in args.threads:
        numba.set_num_threads(threads)
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads, user_api="blas"):
            for m, k, n in shapes:
                a = rng.standard_normal((m, k)).astype(dt)
                b = rng.standard_normal((k, n)).astype(dt)
                ta, tb = torch.from_numpy(a), torch.from_numpy(b)
                ref = a.astype(np.float64) @ b.astype(np.float64)
                cands = {
                    "np.matmul": lambda a=a, b=b: np.matmul(a, b),
                    "torch.mm": lambda ta=ta, tb=tb: torch.mm(ta, tb),
                }
                for (mr, nv, par), g in kernels.items():
                    if par != (threads > 1):
                        continue
                    bp = pack(b, nv)
                    out = np.empty((m, n), dt)
                    got = g(a, bp, n, out)
                    err = np.abs(got - ref).max() / np.abs(ref).max()
                    assert err < (1e-5 if dt == np.float32 else 1e-13), (mr, nv, err)
                    cands[f"probe {mr}x{nv * _lanes(dt)}"] = lambda g=g, a=a, bp=bp, n=n, out=out: (
                        g(a, bp, n, out)
                    )
                from tapernn.backends import packed_kernels as pk
                from tapernn.backends.packed import pack_panels

                panels, pout = pack_panels(b), np.empty((m, n), dt)
                if threads == 1:
                    cands["tapernn packed"] = lambda a=a, p=panels, o=pout: pk.packed_matmul_serial(
                        a, p, o
                    )
                else:
                    cands["tapernn packed"] = lambda a=a, p=panels, o=pout, t=threads: (
                        pk.packed_matmul_parallel(a, p, o, t)
                    )
                times = {name: [] for name in cands}
                clock = time.thread_time if threads == 1 else time.perf_counter
                inner = max(1, int(2e8 // (2 * m * k * n)))
                for _ in range(args.reps // inner + 3):
                    for name, f in cands.items():
                        s = clock()
                        for _ in range(inner):
                            f()
                        times[name].append((clock() - s) / inner)
                row = [
                    f"{name} {gflops(m, k, n, np.median(v)):.0f} ({gflops(m, k, n, min(v)):.0f})"
                    for name, v in times.items()
                ]
                print(
                    f"threads {threads} {dt.name} ({m},{k},{n}) GF/s median (best): "
                    + ", ".join(row),
                    flush=True,
                )


if __name__ == "__main__":
    main()
