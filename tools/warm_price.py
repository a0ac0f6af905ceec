"""The warm price of the calls before the packed call (issue 19, BENCHMARKS.md "hwarm3"): one
process, warm kernel cache, the same (B, T, H) FastLSTM training step (numba, owned calls) on
several models of one seed called in turn (the order reversed every other round), per arm the
call's wall and process CPU medians and its ratio to the packed arm:

- packed: $TAPERNN_NUMBA_PACKED_CALL=2 -- the packed calls (batch split, step loops, driver);
- unsplit: the packed call far away -- what calls 2..49 run now (one Python loop over the whole
  batch, each step GEMM np.matmul at one BLAS thread on the caller);
- step_split (candidate): as unsplit, each step GEMM own_threads.matmul -- split by output
  columns over the two threads (the time-batched GEMMs' split; a hand-off per GEMM);
- halves (candidate): as unsplit, the loops' batch split already running -- its halves' Python
  loops, np.matmul step GEMMs, on the two threads (scan_split's wait for the driver lifted).

The candidates are made by patching this process (no source change). `--probe` instead times
the step GEMMs alone: 50 of them as the unsplit Python loop, as one numba nogil call of the cblas
GEMM NumPy's matmul calls (blas_gemm's ctypes function: np.matmul's bits), and as two such calls
on the halves' rows on two threads -- what a step loop could run before the driver exists --
and the packed driver's 50 GEMMs (Python calls, whole batch) for the GEMMs' own speed.

Run: `python tools/warm_price.py --nice --dtype float64 --rounds 12 [--arms packed,unsplit,
step_split,halves] [--probe]` from the checkout."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import nn, own_threads, scan_split
from tapernn.backends import packed, wait_for_kernels

FAR = 100_000  # (a packed call no run here reaches)


def _step_split(site, a, w, panels, out=None):
    """PackedSite.__call__ with own_threads.matmul for np.matmul (the driver is never due in
    this arm: its packed call is FAR; the first call asks for it, as the real one does)."""
    if site.kernel is not None or site.calls == 0:
        return _REAL_CALL(site, a, w, panels, out)
    site.calls += 1
    if out is None:
        out = np.empty((a.shape[0], w.shape[1]), w.dtype)
    return own_threads.matmul(a, w, out=out)


def _sites_alone(fn) -> bool:
    return any(isinstance(v, scan_split.Site) for v in (fn.__kwdefaults__ or {}).values())


def _adopt_sites(full, half, full_sites) -> str:
    a, b = full.__kwdefaults__ or {}, dict(half.__kwdefaults__ or {})
    for name, v in b.items():
        if isinstance(v, scan_split.Site):
            b[name] = a[name]
    half.__kwdefaults__ = b
    return ""


SITE_WALL = [0.0]  # (the wall of the step GEMMs the caller ran before the driver, this call)


def _timed(site, a, w, panels, out=None):
    if site.kernel is not None or threading.get_ident() != _CALLER:
        return _REAL_CALL(site, a, w, panels, out)
    start = time.perf_counter()
    try:
        return _REAL_CALL(site, a, w, panels, out)
    finally:
        SITE_WALL[0] += time.perf_counter() - start


_CALLER = threading.get_ident()
_REAL_CALL = packed.PackedSite.__call__
_REAL = (scan_split._pending, scan_split.adopt)


def _patched(arm: str) -> None:
    packed.PackedSite.__call__ = _step_split if arm == "step_split" else _timed
    if arm == "halves":
        scan_split._pending, scan_split.adopt = _sites_alone, _adopt_sites
    else:
        scan_split._pending, scan_split.adopt = _REAL


def arms_run(args) -> None:
    b, t, h = (int(v) for v in args.config.split(","))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((t, b, h)) * 0.1).astype(args.dtype)
    g = np.ones_like(x)
    tn.set_backend("numba")

    def call(arm, m):
        _patched(arm)
        try:
            m.forward(x)
            m.zero_grad_parameters()
            m.backward(x, g)
        finally:
            _patched("packed")

    models = {}
    for arm in args.arms.split(","):
        os.environ["TAPERNN_NUMBA_PACKED_CALL"] = "2" if arm == "packed" else str(FAR)
        tn.manual_seed(0)
        models[arm] = nn.Sequencer(nn.FastLSTM(h, h)).astype(args.dtype)
        call(arm, models[arm])  # (compiled now: its Gate reads the packed call)
    for k in range(6):
        if k == 3:
            wait_for_kernels()
        for arm, m in models.items():
            call(arm, m)
    res: dict = {arm: [] for arm in models}
    where: dict = {arm: [] for arm in models}  # (caller thread CPU, step GEMMs' wall on it)
    for i in range(args.rounds):
        for arm in list(models)[:: 1 if i % 2 == 0 else -1]:
            SITE_WALL[0] = 0.0
            w, c, th = time.perf_counter(), time.process_time(), time.thread_time()
            call(arm, models[arm])
            res[arm].append((time.perf_counter() - w, time.process_time() - c))
            where[arm].append((time.thread_time() - th, SITE_WALL[0]))
    base = statistics.median(w for w, _ in res["packed"]) if "packed" in res else None
    for arm, r in res.items():
        ws, cs = sorted(w for w, _ in r), sorted(c for _, c in r)
        q = len(ws) // 4
        ratio = f"  {statistics.median(ws) / base:.3f}x packed" if base else ""
        print(
            f"{args.dtype} {args.config} {arm:10s} wall {statistics.median(ws) * 1e3:7.1f} ms "
            f"[q1 {ws[q] * 1e3:.1f} q3 {ws[-q - 1] * 1e3:.1f}]  CPU {statistics.median(cs) * 1e3:7.1f}"
            f" ms [q1 {cs[q] * 1e3:.1f} q3 {cs[-q - 1] * 1e3:.1f}]{ratio}"
        )
        th, site = (statistics.median(v[k] for v in where[arm]) * 1e3 for k in (0, 1))
        print(
            f"    caller thread CPU {th:.1f} ms, of it step GEMMs before the driver {site:.1f} ms"
        )
    print(f"load {os.getloadavg()[0]:.1f} at {time.strftime('%H:%M:%S', time.gmtime())} UTC")


def probe(args) -> None:
    import ctypes

    import numba

    from tapernn import blas_gemm

    dt = np.dtype(args.dtype)
    b, t, h = (int(v) for v in args.config.split(","))
    real = ctypes.c_float if dt == np.float32 else ctypes.c_double
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    # (cblas: order, transA, transB, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
    c_int = ctypes.c_int
    kind = ctypes.CFUNCTYPE(None, c_int, c_int, c_int, i64, i64, i64, real, ptr, i64, ptr, i64,
                            real, ptr, i64)  # fmt: skip
    gemm = kind(ctypes.cast(blas_gemm.functions()[dt], ptr).value)

    @numba.njit(nogil=True)
    def loop(a, w, out, steps):  # a (T, m, k) C, w (k, n) a transposed C weight, out (T, m, n)
        m, k, n = a.shape[1], a.shape[2], w.shape[1]
        for s in range(steps):
            gemm(101, 111, 112, m, n, k, 1.0, a[s].ctypes.data, k, w.ctypes.data, k, 0.0,
                 out[s].ctypes.data, n)  # fmt: skip

    rng = np.random.default_rng(0)
    a = rng.standard_normal((t, b, h)).astype(dt)
    w = rng.standard_normal((4 * h, h)).astype(dt).T  # (the forward's step weight: F-order)
    ref, out = np.empty((t, b, 4 * h), dt), np.empty((t, b, 4 * h), dt)
    half = b // 2
    h0, h1 = np.ascontiguousarray(a[:, :half]), np.ascontiguousarray(a[:, half:])
    o0, o1 = np.empty((t, half, 4 * h), dt), np.empty((t, b - half, 4 * h), dt)

    def python_loop():
        for s in range(t):
            np.matmul(a[s], w, out=ref[s])

    def numba_whole():
        loop(a, w, out, t)

    def numba_halves():
        f = own_threads.submit(loop, h1, w, o1, t)
        loop(h0, w, o0, t)
        f.result()

    handle = packed.handle()
    handle.prepare(((dt.str,),))  # (the driver, from the kernel cache when warm)
    panels = packed.pack_panels(np.ascontiguousarray(w))
    driven = np.empty_like(ref)

    def packed_driver():  # (the packed calls' GEMM, on the caller, 50 Python calls)
        for s in range(t):
            packed.run_kernel(handle.kernel, a[s], panels, driven[s])

    start = time.perf_counter()
    loop(a, w, out, 1)
    print(f"probe compile {time.perf_counter() - start:.2f} s")
    ways = {"python_loop": python_loop, "numba_whole": numba_whole, "numba_halves": numba_halves}
    ways["packed_driver"] = packed_driver
    for f in ways.values():
        own_threads.run(lambda _, f=f: f(), None)
    halves = np.concatenate([o0, o1], 1)
    print(f"bits: numba whole == np.matmul {np.array_equal(out, ref)}; ", end="")
    print(f"halves == np.matmul's rows {np.array_equal(halves, ref)}")
    res: dict = {k: [] for k in ways}
    for _ in range(args.rounds):
        for k, f in ways.items():
            w0, c0 = time.perf_counter(), time.process_time()
            own_threads.run(lambda _, f=f: f(), None)
            res[k].append(((time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3))
    for k, r in res.items():
        print(
            f"{dt} {t} step GEMMs ({b}, {h}) @ ({h}, {4 * h}) {k:12s} wall "
            f"{statistics.median(x for x, _ in r):6.2f} ms  CPU {statistics.median(y for _, y in r):6.2f} ms"
        )
    print(f"load {os.getloadavg()[0]:.1f} at {time.strftime('%H:%M:%S', time.gmtime())} UTC")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="32,50,256", help="B,T,H")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--arms", default="packed,unsplit,step_split,halves")
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--nice", action="store_true", help="its own autogroup at -19 (a loaded box)")
    args = ap.parse_args()
    if args.nice:
        os.setsid()
        try:
            Path("/proc/self/autogroup").write_text("-19")
        except OSError:
            pass
    b, t, h = (int(v) for v in args.config.split(","))
    args.config = f"{b},{t},{h}"
    probe(args) if args.probe else arms_run(args)


if __name__ == "__main__":
    main()
