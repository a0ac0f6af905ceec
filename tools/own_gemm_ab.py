"""One thread, thread CPU: backends/own_gemm.gemm against np.matmul (OpenBLAS) and torch.mm at
the step's time-batched GEMM halves (and blas_twin.run: the same kernel through its one "A"
signature, the shape check included), in their layouts (issue 19, "hbig"): `a` C or a transposed
view (dW = dG.T @ X: rows of dG.T are dG's columns), b with rows contiguous, out C. Arms
interleaved, rounds alternating direction; GF/s median (best) and own / OpenBLAS time.

With --bias (issue 19, "hnblk"): the projection's out = bias + a @ b instead -- own_gemm with the
bias against blas_gemm.gemm_bias (OpenBLAS's beta = 1 onto the bias copied into out); --panel:
own_gemm's N block (bytes of b's panels; blas_twin.PANEL_BYTES by default).

Run: PYTHONPATH=$PWD python tools/own_gemm_ab.py [--dtype float32] [--rounds 15] [--bias]
     [--panel BYTES] [--shapes "m,k,n,C|T[,F] ..."]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")  # (blas_twin's kernel compiled at once)

# (m, k, n, a's layout[, F: b with columns contiguous]): "T" = rows of a (lda, m)-strided
# transposed view, lda = 2 m
SHAPES = "800,256,1024,C 512,1600,256,T 600,1024,256,C 200,1024,256,C 512,512,2048,C"


def operand(rng, m, k, layout, dt):
    if layout == "C":
        return rng.standard_normal((m, k)).astype(dt)
    full = rng.standard_normal((k, 2 * m)).astype(dt)  # (dG: (T B, 4 H); a = its half's .T)
    return full[:, :m].T


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--bias", action="store_true")
    ap.add_argument("--panel", type=int, default=0)
    args = ap.parse_args()
    import numba  # noqa: F401 -- (blas_twin runs only where numba is imported)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    dt = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    print(f"load {os.getloadavg()[0]:.1f}, {dt.name}, {args.rounds} rounds", flush=True)
    with threadpool_limits(limits=1, user_api="blas"):
        for spec in args.shapes.split():
            m, k, n, layout, *b_layout = spec.split(",")
            shape = (int(m), int(k), int(n), layout)
            row = shape_row(*shape, dt, args.rounds, rng, args.bias, args.panel, b_layout == ["F"])
            print(row, flush=True)


def interleaved(arms: dict, rounds: int, inner: int) -> dict:
    """{name: [thread CPU s of one call, a round]}: each arm `inner` calls a round, the rounds
    alternating the arms' order."""
    times: dict = {name: [] for name in arms}
    names = list(arms)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            f = arms[name]
            s = time.thread_time()
            for _ in range(inner):
                f()
            times[name].append((time.thread_time() - s) / inner)
    return times


def shape_row(m, k, n, layout, dt, rounds, rng, bias=False, panel=0, b_f=False) -> str:
    import torch

    from tapernn import aligned, blas_gemm
    from tapernn.backends import blas_twin

    own_gemm = blas_twin.kernels()  # (the copy blas_twin runs; own_gemm.gemm: its C signature)

    a = operand(rng, m, k, layout, dt)
    b = rng.standard_normal((k, n)).astype(dt)
    b = np.asfortranarray(b) if b_f else b  # (the projection's W.T)
    row = rng.standard_normal(n).astype(dt) if bias else np.empty(0, dt)
    ta, tb, trow = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(row)
    out, out2, out3 = (np.empty((m, n), dt) for _ in range(3))
    q = blas_twin.Q[dt.itemsize]
    nt = own_gemm.block_tiles(k, n, dt.itemsize, q, panel or blas_twin.PANEL_BYTES)
    work = aligned.empty(own_gemm.work_size(m, k, n, dt.itemsize, q, nt), dt)
    assert own_gemm.fits(a, b, out2)
    own_gemm.gemm(a, b, out2, work, q, blas_twin.UNROLL, nt, row)
    if bias:
        ran = blas_twin.run_bias(a, b, row, out3)
        assert blas_gemm.gemm_bias(a, b, row, out)
    else:
        ran = blas_twin.run(a, b, out3)
        np.matmul(a, b, out=out)
    assert not ran or np.array_equal(out3, out)  # (declined: blas_twin's rule; own timed alone)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    if bias:
        ref += row
    err = np.abs(out2 - ref).max() / np.abs(ref).max()
    assert err < (1e-5 if dt == np.float32 else 1e-13), err
    if bias:
        arms = {
            "OpenBLAS": lambda: blas_gemm.gemm_bias(a, b, row, out),
            "torch.addmm": lambda: torch.addmm(trow, ta, tb),
            "own": lambda: own_gemm.gemm(a, b, out2, work, q, blas_twin.UNROLL, nt, row),
            "blas_twin.run_bias": lambda: blas_twin.run_bias(a, b, row, out3),
        }
    else:
        arms = {
            "OpenBLAS": lambda: np.matmul(a, b, out=out),
            "torch.mm": lambda: torch.mm(ta, tb),
            "own": lambda: own_gemm.gemm(a, b, out2, work, q, blas_twin.UNROLL, nt, row),
            "blas_twin.run": lambda: blas_twin.run(a, b, out3),
        }
    if not ran:
        arms = {name: f for name, f in arms.items() if not name.startswith("blas_twin")}
    times = interleaved(arms, rounds, max(1, int(3e8 // (2 * m * k * n))))
    fl = 2.0 * m * k * n
    row_text = [
        f"{name} {fl / np.median(v) / 1e9:.0f} ({fl / min(v) / 1e9:.0f})"
        for name, v in times.items()
    ]
    ratio = np.median(times["own"]) / np.median(times["OpenBLAS"])
    what = f"({m},{k},{n}) a {layout}{' b F' if b_f else ''}{' +bias' if bias else ''} nt {nt}"
    text = what + ": " + ", ".join(row_text)
    return text + f"; own/OpenBLAS time {ratio:.3f}"


if __name__ == "__main__":
    main()
