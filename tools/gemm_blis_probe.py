"""Standalone probe (issue 19, "hbig"): a BLIS-style driver over packed_kernels' microkernel for
the step's time-batched GEMMs (C = A @ B, M in the hundreds to thousands), one thread, against
np.matmul (OpenBLAS) and torch.mm (MKL / oneDNN) at one thread.

B is packed into panels of NV = 3 vectors (one microkernel tile a panel: (ceil(N / NR), K, NR),
NR = 3 lanes, zero-padded, 64-byte aligned); A one MR-row block at a time, k-major, into a small
aligned buffer (`_transpose` where its rows are contiguous). Loop orders (--arms order:kc:mc:near[:1], near: the microkernel's L1 prefetch distance, 1:
the next C tile prefetched for writing):
  "rows": B packed whole first; K blocks of kc; per mc rows of A packed, per row block of A (its
     kc x MR in L1), every panel (B's K block in L2);
  "rowsk": "rows" with B packed one K block at a time (what backends/own_gemm.py keeps);
  "panels": K blocks of kc; per block of mc rows of A (packed, in L2), per panel (its kc rows
     in L1), every row block;
  and always "direct" ("rows" over B in place, the kernel's row stride B's: compiled per N;
  slower where a row is 4 KiB, N = 1024 f32) and "rows nopack" (B's panels packed outside the
  timing).
Pack costs are inside the timed call. Times: thread CPU, the arms interleaved, rounds
alternating direction; GF/s median (best).

Run: PYTHONPATH=$PWD python tools/gemm_blis_probe.py [--dtype float32] [--rounds 15]
"""

from __future__ import annotations

import argparse

import numpy as np
from numba import njit

from tapernn import aligned
from tapernn.backends.own_gemm import _copy3, _copy_rows, _prefetch_w
from tapernn.backends.packed_kernels import (
    MR,
    VEC_BITS,
    make_microkernel,
    make_transpose,
)
from tools.own_gemm_ab import interleaved

_tr = make_transpose(MR, VEC_BITS)
KERNELS = {near: make_microkernel(MR, 3, VEC_BITS, False, 0, near) for near in (0, 8, 16)}


@njit(nogil=True)
def pack_cols_flat(b, out):
    """out[j, r, c] = b[r, j * nr + c], zero-padded: 3-vector copies."""
    k, n = b.shape
    npan, _, nr = out.shape
    of = out.ravel()
    bf = b.ravel()
    full = n // nr
    for r in range(k):
        for j in range(full):
            _copy3(b, r, j * nr, of, (j * k + r) * nr)
        if full < npan:
            d = (full * k + r) * nr
            for c in range(nr):
                of[d + c] = bf[r * n + full * nr + c] if full * nr + c < n else 0


def _build(near: int, mk=None):
    mk = mk or KERNELS[near]

    @njit(nogil=True, inline="always")
    def pack_block(a, i, rows, k0, kk, dst, d0):
        """dst[d0 + p * MR + r] = a[i + r, k0 + p] (rows < MR: zero-padded)."""
        lanes = VEC_BITS // (8 * a.itemsize)
        kv = 0
        if rows == MR and a.strides[1] == a.itemsize:
            kv = kk // lanes * lanes
            for p in range(0, kv, lanes):
                _tr(a, i, k0 + p, dst, d0 + p * MR, lanes)
        if rows == MR and a.strides[0] == a.itemsize:  # (a transposed view: MR-element rows)
            at = a.T
            for p in range(kk):
                _copy_rows(at, k0 + p, i, dst, d0 + p * MR)
            kv = kk
        for p in range(kv, kk):
            for r in range(MR):
                dst[d0 + p * MR + r] = a[i + r, k0 + p] if r < rows else 0

    @njit(nogil=True, inline="always")
    def pack_t(a, i0, m1, k0, kk, dst):
        """pack_block of rows i0..m1 of a transposed view, k row by k row (contiguous reads)."""
        at = a.T
        full = i0 + (m1 - i0) // MR * MR
        for p in range(kk):
            for i in range(i0, full, MR):
                _copy_rows(at, k0 + p, i, dst, (i - i0) * kk + p * MR)
        if full < m1:
            for p in range(kk):
                for r in range(MR):
                    dst[(full - i0) * kk + p * MR + r] = a[full + r, k0 + p] if full + r < m1 else 0

    @njit(nogil=True, inline="always")
    def tile(abf, a0, bpf, base, lanes, nvec, flag, c, c0, ldc, kk):
        if nvec == 3:
            mk(abf, a0, bpf, (base, base + lanes, base + 2 * lanes, 0, 0, 0, flag), c, c0, ldc, kk)
        elif nvec == 2:
            mk(abf, a0, bpf, (base, base + lanes, 0, 0, flag), c, c0, ldc, kk)
        else:
            mk(abf, a0, bpf, (base, 0, flag), c, c0, ldc, kk)

    @njit(nogil=True, inline="always")
    def edge(abf, a0, bpf, base, lanes, flag, out, i, rows, col, w, ct, kk):
        nr = ct.shape[1]
        if flag:
            for r in range(rows):
                for q in range(w):
                    ct[r, q] = out[i + r, col + q]
        tile(abf, a0, bpf, base, lanes, -(-w // lanes), flag, ct.ravel(), 0, nr, kk)
        for r in range(rows):
            for q in range(w):
                out[i + r, col + q] = ct[r, q]

    @njit(nogil=True)
    def rows_first(a, bp, out, kc, pw, mc):
        return rows_k(a, bp, np.empty(0, a.dtype), out, kc, pw, mc)

    @njit(nogil=True)
    def rows_k(a, bp, bbuf, out, kc, pw, mc):
        """bbuf non-empty: bp is B (K, N) C, packed one K block at a time into bbuf."""
        m, k = a.shape
        n = out.shape[1]
        if bbuf.size:
            lanes = VEC_BITS // (8 * a.itemsize)
            nr = 3 * lanes
            npan = -(-n // nr)
            pstride = 0
        elif bp.ndim == 3:
            npan, _, nr = bp.shape
            lanes = nr // 3
            pstride = k * nr  # (a panel's elements)
        else:  # (B in place: "panels" of 3 vectors side by side in its rows)
            lanes = VEC_BITS // (8 * a.itemsize)
            nr = 3 * lanes
            npan = -(-n // nr)
            pstride = nr
        kc = min(kc, max(k, 1))
        mc = max(mc // MR, 1) * MR
        abf = np.empty(kc * mc + 16, a.dtype)
        ct = np.empty((MR, nr), a.dtype)
        bpf, of = bp.ravel(), out.ravel()
        trans = a.strides[0] == a.itemsize and m > 1
        for k0 in range(0, max(k, 1), kc):
            kk = min(kc, k - k0)
            flag = 1 if k0 > 0 else 0
            if bbuf.size:
                pstride = kk * nr
                bf2 = bp.ravel()
                b2 = bf2.reshape((bf2.size // n, n))  # (bp is B here: typed for panels too)
                full = n // nr
                for r in range(kk):
                    for j in range(full):
                        _copy3(b2, k0 + r, j * nr, bbuf, j * pstride + r * nr)
                    if full < npan:
                        for c in range(nr):
                            at = full * nr + c
                            bbuf[full * pstride + r * nr + c] = (
                                bf2[(k0 + r) * n + at] if at < n else 0
                            )
                bpf = bbuf
            for i0 in range(0, m, mc):
                m1 = min(m, i0 + mc)
                if trans:
                    pack_t(a, i0, m1, k0, kk, abf)
                for i in range(i0, m1, MR):
                    rows = min(MR, m - i)
                    a0 = (i - i0) * kk
                    if not trans:
                        pack_block(a, i, rows, k0, kk, abf, a0)
                    for j in range(npan):
                        col = j * nr
                        w = min(nr, n - col)
                        base = j * pstride + (0 if bbuf.size else k0 * (n if bp.ndim == 2 else nr))
                        if pw and j + 1 < npan and i + MR <= m:
                            nxt = i * n + col + nr
                            for r in range(MR):
                                for q in range(0, nr, 16):
                                    _prefetch_w(of, nxt + r * n + q)
                        if rows == MR and w == nr:
                            tile(abf, a0, bpf, base, lanes, 3, flag, of, i * n + col, n, kk)
                        else:
                            edge(abf, a0, bpf, base, lanes, flag, out, i, rows, col, w, ct, kk)
        return out

    @njit(nogil=True)
    def panels_first(a, bp, out, kc, mc):
        m, k = a.shape
        n = out.shape[1]
        npan, _, nr = bp.shape
        lanes = nr // 3
        kc = min(kc, max(k, 1))
        mc = min(mc, m) // MR * MR + MR
        abf = np.empty(kc * mc + 16, a.dtype)
        ct = np.empty((MR, nr), a.dtype)
        bpf, of = bp.ravel(), out.ravel()
        for k0 in range(0, max(k, 1), kc):
            kk = min(kc, k - k0)
            flag = 1 if k0 > 0 else 0
            for i0 in range(0, m, mc):
                m1 = min(m, i0 + mc)
                for i in range(i0, m1, MR):
                    pack_block(a, i, min(MR, m - i), k0, kk, abf, (i - i0) * kk)
                for j in range(npan):
                    col = j * nr
                    w = min(nr, n - col)
                    base = j * k * nr + k0 * nr
                    for i in range(i0, m1, MR):
                        rows = min(MR, m - i)
                        a0 = (i - i0) * kk
                        if rows == MR and w == nr:
                            tile(abf, a0, bpf, base, lanes, 3, flag, of, i * n + col, n, kk)
                        else:
                            edge(abf, a0, bpf, base, lanes, flag, out, i, rows, col, w, ct, kk)
        return out

    return rows_first, panels_first, rows_k


_BUF = {}


_DIRECT = {}


def direct(n: int, dtype, near: int = 8):
    """rows_first over B in place (no pack: the microkernel's panel row stride NR = B's row
    length n, compiled per n; n a multiple of the lanes)."""
    key = (n, np.dtype(dtype).str, near)
    if key in _DIRECT:
        return _DIRECT[key]
    lanes = VEC_BITS // (8 * np.dtype(dtype).itemsize)
    mk = make_microkernel(MR, n // lanes, VEC_BITS, False, 0, near)
    rows_first = _build(near, mk)[0]
    _DIRECT[key] = rows_first
    return rows_first


def pack_b(b):
    """B's panels in a buffer kept per shape (a fresh 1 MiB allocation costs ~150 us of page
    faults a call)."""
    k, n = b.shape
    nr = 3 * VEC_BITS // (8 * b.itemsize)
    key = (k, n, b.dtype.str)
    if key not in _BUF:
        _BUF[key] = aligned.empty((-(-n // nr), k, nr), b.dtype)
    bp = _BUF[key]
    pack_cols_flat(b, bp)
    return bp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--at", action="store_true", help="A a transposed view (dW's layout)")
    ap.add_argument("--shapes", default="800,256,1024 512,1600,256 1600,1024,128")
    # order:kc:mc:near[:1 = prefetch the next tile of C for writing]
    ap.add_argument("--arms", default="rows:800:64:8:1,rowsk:400:64:8:1,panels:256:2000:8")
    args = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    dt = np.dtype(args.dtype)
    drivers = {near: _build(near) for near in KERNELS}
    rng = np.random.default_rng(0)
    with threadpool_limits(limits=1, user_api="blas"):
        for shape in args.shapes.split():
            m, k, n = (int(v) for v in shape.split(","))
            a = rng.standard_normal((m, k)).astype(dt)
            if args.at:
                a = np.ascontiguousarray(a.T).T
            b = rng.standard_normal((k, n)).astype(dt)
            print(f"{dt.name} ({m},{k},{n}): " + shape_row(a, b, drivers, args), flush=True)


def arm(spec, a, b, out, drivers):
    """The call `spec` (--arms) names."""
    order, kc, mc, near, pw = (spec + ":0").split(":")[:5]
    rows_first, panels_first, rows_k = drivers[int(near)]
    kc, mc, pw = int(kc), int(mc), int(pw)
    if order == "rowsk":
        bb = aligned.empty(kc * (b.shape[1] + 48), a.dtype)
        return lambda: rows_k(a, b, bb, out, kc, pw, mc)
    if order == "rows":
        return lambda: rows_first(a, pack_b(b), out, kc, pw, mc)
    return lambda: panels_first(a, pack_b(b), out, kc, mc)


def shape_row(a, b, drivers, args) -> str:
    import torch

    (m, k), n, dt = a.shape, b.shape[1], a.dtype
    ref = a.astype(np.float64) @ b.astype(np.float64)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out = np.empty((m, n), dt)
    arms = {"np.matmul": lambda: np.matmul(a, b, out=out), "torch.mm": lambda: torch.mm(ta, tb)}
    for spec in args.arms.split(","):
        arms[spec] = arm(spec, a, b, out, drivers)
    bp0 = pack_b(b)
    r1 = drivers[8][0]
    if n % (VEC_BITS // (8 * dt.itemsize)) == 0:  # (direct's rows: whole vectors)
        dr = direct(n, dt)
        arms["direct:256"] = lambda: dr(a, b, out, 256, 1, 64)
        arms["direct:800"] = lambda: dr(a, b, out, 800, 1, 64)
    arms["rows nopack"] = lambda: r1(a, bp0, out, 800, 1, 8)
    for name, fn in arms.items():
        if name not in ("np.matmul", "torch.mm"):
            err = np.abs(fn() - ref).max() / np.abs(ref).max()
            assert err < (1e-5 if dt == np.float32 else 1e-13), (name, err)
    arms["pack_b alone"] = lambda: pack_b(b)
    times = interleaved(arms, args.rounds, max(1, int(3e8 // (2 * m * k * n))))
    fl = 2.0 * m * k * n
    row = []
    for name, v in times.items():
        if name == "pack_b alone":
            row.append(f"pack_b {np.median(v) * 1e6:.0f} us")
        else:
            row.append(f"{name} {fl / np.median(v) / 1e9:.0f} ({fl / min(v) / 1e9:.0f})")
    return ", ".join(row)


if __name__ == "__main__":
    main()
