"""Prototype (issue 19, branch hown): a FastLSTM training step that owns both cores -- BLAS at ONE
thread, a persistent 1-worker thread taking half of every piece of work (the projection's rows,
each loop's batch rows, the weight gradients' output columns, dX's rows), results in disjoint
slices (no thread-dependent sums). Hand NumPy + numba nogil kernels; not part of the library.

Arms, interleaved in one process: "own2" (the split, BLAS 1 thread), "own1" (the same code, all
in the caller's thread, BLAS 1 thread), "blas2" (the same code unsplit, BLAS pool as it is) and
torch nn.LSTM (default threads). `--torch-alone`: torch only (run as a separate process).

Run: PYTHONPATH=$PWD python tools/proto_own.py --configs 32,50,256 32,50,512 --reps 21
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapernn.backends import vecmath
from tapernn.blas import blas_threads


def _kernels(dtype):
    """fwd(P, acc, c_prev, c, h): P (rows, 4H) gets the activations; bwd(...)."""
    f32 = np.dtype(dtype) == np.float32
    if f32:
        sig = lambda t, x, o: vecmath.sigmoid_lines(t, x, o)
        th = lambda t, x, o: vecmath.tanh_lines(t, x, o)
    else:
        sig = lambda t, x, o: [f"{o} = 1.0 / (1.0 + np.exp(-{x}))"]
        th = lambda t, x, o: [f"{o} = np.tanh({x})"]
    ind = "            "
    fwd = [
        "@nb.njit(nogil=True, error_model='numpy', cache=False)",
        "def fwd(P, acc, b, c_prev, c, h, tc):",
        "    R, H = c.shape",
        "    for r in range(R):",
        "        cp = c_row(c_prev, r)",
        "        cr = c_row(c, r)",
        "        hr = c_row(h, r)",
        "        tr = c_row(tc, r)",
    ]
    for k, fn in enumerate([sig, th, sig, sig]):
        fwd += [
            f"        P{k} = c_row(P, 4 * r + {k})",
            f"        a{k} = c_row(acc, 4 * r + {k})",
            f"        b{k} = c_row(b, {k})",
            "        for j in range(H):",
            f"            a = P{k}[j] + a{k}[j] + b{k}[j]",
            *[ind + s for s in fn(f"u{k}_", "a", f"P{k}[j]")],
        ]
    fwd += [
        "        for j in range(H):",
        "            cr[j] = P2[j] * cp[j] + P0[j] * P1[j]",
        "        for j in range(H):",
        *[ind + s for s in th("u5_", "cr[j]", "tr[j]")],
        "        for j in range(H):",
        "            hr[j] = P3[j] * tr[j]",
    ]
    bwd = [
        "@nb.njit(nogil=True, error_model='numpy', cache=False)",
        "def bwd(A, dh_next, dy, dc, c_prev, tc):",
        "    R, H = dc.shape",
        "    for r in range(R):",
        "        for j in range(H):",
        "            i = A[r, j]",
        "            g = A[r, H + j]",
        "            f = A[r, 2 * H + j]",
        "            o = A[r, 3 * H + j]",
        "            t = tc[r, j]",
        "            dh = dh_next[r, j] + dy[r, j]",
        "            d = dc[r, j] + dh * o * (ONE - t * t)",
        "            A[r, j] = d * g * i * (ONE - i)",
        "            A[r, H + j] = d * i * (ONE - g * g)",
        "            A[r, 2 * H + j] = d * c_prev[r, j] * f * (ONE - f)",
        "            A[r, 3 * H + j] = dh * t * o * (ONE - o)",
        "            dc[r, j] = d * f",
    ]
    src = "import numpy as np\nimport numba as nb\n" + vecmath.HEADER
    src += f"ONE = np.{np.dtype(dtype).name}(1.0)\n"
    src += "\n".join(fwd) + "\n\n" + "\n".join(bwd) + "\n"
    ns: dict = {}
    exec(compile(src, f"<proto_own {np.dtype(dtype).name}>", "exec"), ns)  # noqa: S102
    return ns["fwd"], ns["bwd"]


def np_fwd(P, acc, b, c_prev, c, h, tc):
    """The cell forward in NumPy ufunc calls (the NumPy backend's kind of loop body: the GIL is
    released inside each call, held between them)."""
    H = c.shape[1]
    P = P.reshape(-1, 4 * H)
    P += acc.reshape(-1, 4 * H)
    P += b.reshape(-1)
    np.negative(P, out=P)
    np.exp(P, out=P)
    P += 1
    np.reciprocal(P, out=P)  # sigmoid everywhere; g = 2 sigmoid(2a) - 1 is not needed here
    i, g, f, o = (P[:, k * H : (k + 1) * H] for k in range(4))
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=tc)
    c += tc
    np.tanh(c, out=tc)
    np.multiply(o, tc, out=h)


def np_bwd(A, dh_next, dy, dc, c_prev, tc):
    H = dc.shape[1]
    i, g, f, o = (A[:, k * H : (k + 1) * H] for k in range(4))
    dh = dh_next + dy
    t2 = tc * tc
    np.subtract(1, t2, out=t2)
    t2 *= o
    t2 *= dh
    dc += t2
    do = dh * tc
    di = dc * g
    dg = dc * i
    df = dc * c_prev
    s = A * (1 - A)
    dc *= f
    A[:, :H] = di
    A[:, H : 2 * H] = dg
    A[:, 2 * H : 3 * H] = df
    A[:, 3 * H :] = do
    A *= s


_pool = ThreadPoolExecutor(1)


class Step:
    """One FastLSTM step (h0 = c0 = 0) on (T, B, D) data: forward, backward with dX, dW."""

    def __init__(self, B, T, D, H, dtype, split: bool, blas: int | None, numpy_cells=False):
        self.B, self.T, self.D, self.H, self.dtype = B, T, D, H, np.dtype(dtype)
        self.split, self.blas = split, blas
        rng = np.random.default_rng(1)
        s = 1 / np.sqrt(H)
        self.WxT = (rng.uniform(-s, s, (D, 4 * H))).astype(dtype)
        self.WhT = (rng.uniform(-s, s, (H, 4 * H))).astype(dtype)
        self.Wh = np.ascontiguousarray(self.WhT.T)
        self.Wx = np.ascontiguousarray(self.WxT.T)
        self.b = (rng.uniform(-s, s, 4 * H)).astype(dtype)
        self.b4 = self.b.reshape(4, H)
        self.fwd, self.bwd = (np_fwd, np_bwd) if numpy_cells else _kernels(dtype)
        e = lambda *s: np.zeros(s, dtype)
        self.A = e(T, B, 4 * H)  # activations, then dZ
        self.c = e(T + 1, B, H)
        self.tc = e(T, B, H)
        self.Y = e(T + 1, B, H)  # Y[0] = h0
        self.acc = e(B, 4 * H)
        self.dh = e(B, H)
        self.dc = e(B, H)
        self.dWxT, self.dWhT, self.db = e(D, 4 * H), e(H, 4 * H), e(4 * H)
        self.dX = e(T * B, D)
        h = B // 2 if split else B
        self.rows = [slice(0, h), slice(h, B)] if split else [slice(0, B)]
        G = 4 * H
        g = G // 2 if split else G
        self.cols = [slice(0, g), slice(g, G)] if split else [slice(0, G)]
        n = T * B // 2 if split else T * B
        self.trows = [slice(0, n), slice(n, T * B)] if split else [slice(0, T * B)]

    # each piece takes its part index k
    def _proj(self, x, k):
        tr = self.trows[k]
        np.matmul(
            x.reshape(self.T * self.B, -1)[tr], self.WxT, out=self.A.reshape(-1, 4 * self.H)[tr]
        )

    def _floop(self, k):
        r = self.rows[k]
        A, c, tc, Y, acc = self.A, self.c, self.tc, self.Y, self.acc[r]
        for t in range(self.T):
            np.matmul(Y[t, r], self.WhT, out=acc)
            self.fwd(
                A[t, r].reshape(-1, self.H),
                acc.reshape(-1, self.H),
                self.b4,
                c[t, r],
                c[t + 1, r],
                Y[t + 1, r],
                tc[t, r],
            )

    def _bloop(self, gy, k):
        r = self.rows[k]
        A, c, tc, dh, dc = self.A, self.c, self.tc, self.dh[r], self.dc[r]
        dh[...] = 0
        dc[...] = 0
        for t in reversed(range(self.T)):
            self.bwd(A[t, r], dh, gy[t, r], dc, c[t, r], tc[t, r])
            np.matmul(A[t, r], self.Wh, out=dh)

    def _grads(self, x, k):
        T, B = self.T, self.B
        cl, tr = self.cols[k], self.trows[k]
        Z = self.A.reshape(T * B, -1)
        np.matmul(x.reshape(T * B, -1).T, Z[:, cl], out=self.dWxT[:, cl])
        np.matmul(self.Y[1:T].reshape((T - 1) * B, -1).T, Z[B:, cl], out=self.dWhT[:, cl])
        np.sum(Z[:, cl], axis=0, out=self.db[cl])
        np.matmul(Z[tr], self.Wx, out=self.dX[tr])

    def _both(self, f, *a):
        if not self.split:
            return f(*a, 0)
        fut = _pool.submit(f, *a, 1)
        f(*a, 0)
        fut.result()

    def __call__(self, x, gy):
        with blas_threads(self.blas):
            self._both(self._proj, x)
            self._both(self._floop)
            self._both(self._bloop, gy)
            self._both(self._grads, x)
        return self.Y[1:]


def check(B, T, H, dtype):
    """own2 = own1 to 1e-5 relative (f32) / 1e-12 (f64): same equations, rows apart."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    a, b = Step(B, T, H, H, dtype, True, 1), Step(B, T, H, H, dtype, False, 1)
    ya, yb = a(x, g).copy(), b(x, g).copy()
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-4
    for n, u, v in [
        ("y", ya, yb),
        ("dX", a.dX, b.dX),
        ("dWx", a.dWxT, b.dWxT),
        ("dWh", a.dWhT, b.dWhT),
        ("db", a.db, b.db),
    ]:
        err = np.abs(u - v).max() / max(np.abs(v).max(), 1e-30)
        assert err < tol, (n, err)
    # torch agreement for the values (f64 only, loose): same weights
    return True


def torch_step(B, T, H, dtype, x, g):
    import torch

    tdt = {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]
    lstm = torch.nn.LSTM(H, H).to(tdt)
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(g)

    def step():
        lstm.zero_grad(set_to_none=True)
        xt.grad = None
        out, _ = lstm(xt)
        out.backward(gt)

    return step


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(u) for u in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # all but idle and iowait


def _own_jiffies() -> int:
    with open("/proc/self/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return int(v[11]) + int(v[12])


def _waited_ns() -> int:
    """Nanoseconds this process's threads have waited on a run queue (schedstat field 2)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except OSError:
            pass
    return total


def timed_call(f):
    """(wall, process CPU, run-queue wait of this process's threads) of one call: a call whose
    threads never waited for a CPU ran as on a free machine (memory-bandwidth sharing aside)."""
    w0 = _waited_ns()
    c, t = time.process_time(), time.perf_counter()
    f()
    w = time.perf_counter() - t
    c = time.process_time() - c
    return w, c, (_waited_ns() - w0) * 1e-9


def timed_batch(f, n):
    """Per-call wall and process CPU time (means over n calls in a row) and the other processes'
    CPU during them in cores (from /proc/stat: 10 ms jiffies, so only a batch of ~0.2 s or more
    tells a quiet machine from a busy one)."""
    b0, o0 = _busy_jiffies(), _own_jiffies()
    c, t = time.process_time(), time.perf_counter()
    for _ in range(n):
        f()
    w = time.perf_counter() - t
    c = time.process_time() - c
    others = ((_busy_jiffies() - b0) - (_own_jiffies() - o0)) / 100 / w
    return w / n, c / n, others


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--torch-alone", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--batch", type=int, default=8, help="calls per timed batch")
    ap.add_argument(
        "--others", type=float, default=0.15, help="a batch is quiet below this many other cores"
    )
    ap.add_argument("--arms", nargs="+", default=["own2", "own1", "blas2"])
    args = ap.parse_args()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)
        arms = {}
        if not args.torch_alone:
            check(B, T, H, args.dtype)
            made = {
                "own2": (True, 1),
                "own1": (False, 1),
                "blas2": (False, None),
                "np2": (True, 1, True),
                "np1": (False, 1, True),
            }
            for k in args.arms:
                s = Step(B, T, H, H, args.dtype, *made[k])
                arms[k] = lambda s=s, x=x, g=g: s(x, g)
        if not args.no_torch:
            arms["torch"] = torch_step(
                B, T, H, "float32", x.astype(np.float32), g.astype(np.float32)
            )
        for f in arms.values():
            for _ in range(5):
                f()
        wall = {k: [] for k in arms}
        cpu = {k: [] for k in arms}
        clean = {k: [] for k in arms}
        for _ in range(args.reps):
            for k, f in arms.items():
                time.sleep(0.02)  # a rest: other pools' spinning threads go to sleep
                w, c, o = timed_batch(f, args.batch)
                wall[k].append(w)
                cpu[k].append(c)
                if o < args.others:
                    clean[k].append(w)
        base = np.median(wall["torch"]) if "torch" in wall else None
        for k in arms:
            r = f", {np.median(wall[k]) / base:.2f}x torch" if base else ""
            cl = clean[k]
            cb = np.median(clean["torch"]) if clean.get("torch") else None
            q = (
                f"; quiet batches {len(cl)}: median {np.median(cl) * 1e3:.2f} ms"
                + (f" = {np.median(cl) / cb:.2f}x torch's quiet" if cb else "")
                if cl
                else "; no quiet batch"
            )
            print(
                f"({B},{T},{H}) {args.dtype} {k:6s} median {np.median(wall[k]) * 1e3:7.2f} ms"
                f" (best {min(wall[k]) * 1e3:.2f}, CPU {np.median(cpu[k]) * 1e3:.2f}){r}{q}",
                flush=True,
            )
        print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
