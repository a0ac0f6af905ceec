"""Prototype (issue 19, branch hloop): a FastLSTM training step whose forward and reverse loops
are each ONE nogil numba call per batch half (the packed recurrent GEMM -- packed_kernels._panels
-- and the fused gate kernel inside, no Python per step), against the same step with a Python
loop calling the same two kernels per step, tapernn's own step and torch. BLAS at one thread
for the time-batched GEMMs, each split in two halves over the caller and one worker (as
own_threads.py does). Hand code, not part of the library.

Arms: whole2 / whole1 (whole-loop kernels, two threads / all in the caller), py2 / py1 (Python
loop per step), tn2 (tapernn default: owned), tn1 (tapernn, own_threads off, BLAS 1), torch.
Per arm: wall and process CPU per step, medians of interleaved rounds; `--parts` prints the
one-thread CPU per part of the whole1 / py1 arms.

Run: PYTHONPATH=$PWD python tools/proto_loop.py --configs 32,50,256 --reps 15
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


def kernels(dtype):
    """(cell_fwd, cell_bwd, floop, bloop) numba functions for `dtype`."""
    f32 = np.dtype(dtype) == np.float32
    if f32:
        sig = lambda t, x, o: vecmath.sigmoid_lines(t, x, o)
        th = lambda t, x, o: vecmath.tanh_lines(t, x, o)
    else:
        sig = lambda t, x, o: [f"{o} = ONE / (ONE + np.exp(-{x}))"]
        th = lambda t, x, o: [f"{o} = np.tanh({x})"]
    ind = "            "
    # cell_fwd(Af, Xf, bias, Cf, Hf, TCf, acc, t, B, lo, R, H): the step's rows lo:lo+R of the
    # flat (T, B, 4H) slab A (activations out), projection X (T, B, 4H), c (T+1, B, H), h
    # (T+1, B, H), tanh(c) (T, B, H); acc (R, 4H) = h_{t-1} @ U
    fwd = [
        "@nb.njit(nogil=True, error_model='numpy', cache=False)",
        "def cell_fwd(Af, Xf, b, Cf, Hf, TCf, acc, t, B, lo, R, H):",
        "    G = 4 * H",
        "    for r in range(R):",
        "        row = t * B + lo + r",
        "        cp = c_view(Cf, row * H, (H,))",
        "        cr = c_view(Cf, (row + B) * H, (H,))",
        "        hr = c_view(Hf, (row + B) * H, (H,))",
        "        tr = c_view(TCf, row * H, (H,))",
    ]
    for k, fn in enumerate([sig, th, sig, sig]):
        fwd += [
            f"        P{k} = c_view(Af, row * G + {k} * H, (H,))",
            f"        X{k} = c_view(Xf, row * G + {k} * H, (H,))",
            f"        a{k} = c_row(acc, r)[{k} * H:({k} + 1) * H]",
            f"        b{k} = b[{k} * H:({k} + 1) * H]",
            "        for j in range(H):",
            f"            a = X{k}[j] + a{k}[j] + b{k}[j]",
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
    # cell_bwd(Af, dh, GYf, dc, Cf, TCf, t, B, lo, R, H): dZ into A's rows; dc updated
    bwd = [
        "@nb.njit(nogil=True, error_model='numpy', cache=False)",
        "def cell_bwd(Af, dh, GYf, dc, Cf, TCf, t, B, lo, R, H):",
        "    G = 4 * H",
        "    for r in range(R):",
        "        row = t * B + lo + r",
        "        A = c_view(Af, row * G, (G,))",
        "        gy = c_view(GYf, row * H, (H,))",
        "        cp = c_view(Cf, row * H, (H,))",
        "        tc = c_view(TCf, row * H, (H,))",
        "        dhr = c_row(dh, r)",
        "        dcr = c_row(dc, r)",
        "        for j in range(H):",
        "            i = A[j]",
        "            g = A[H + j]",
        "            f = A[2 * H + j]",
        "            o = A[3 * H + j]",
        "            tt = tc[j]",
        "            d_h = dhr[j] + gy[j]",
        "            d = dcr[j] + d_h * o * (ONE - tt * tt)",
        "            A[j] = d * g * i * (ONE - i)",
        "            A[H + j] = d * i * (ONE - g * g)",
        "            A[2 * H + j] = d * cp[j] * f * (ONE - f)",
        "            A[3 * H + j] = d_h * tt * o * (ONE - o)",
        "            dcr[j] = d * f",
    ]
    loops = [
        "@nb.njit(nogil=True, error_model='numpy', cache=False)",
        "def floop(Af, Xf, b, Cf, Hf, TCf, acc, packed, T, B, lo, R, H):",
        "    npan = packed.shape[0]",
        "    for t in range(T):",
        "        h = c_view(Hf, (t * B + lo) * H, (R, H))",
        "        _panels(h, packed, acc, 0, npan)",
        "        cell_fwd(Af, Xf, b, Cf, Hf, TCf, acc, t, B, lo, R, H)",
        "",
        "@nb.njit(nogil=True, error_model='numpy', cache=False)",
        "def bloop(Af, dh, GYf, dc, Cf, TCf, packed, T, B, lo, R, H):",
        "    npan = packed.shape[0]",
        "    for t in range(T - 1, -1, -1):",
        "        cell_bwd(Af, dh, GYf, dc, Cf, TCf, t, B, lo, R, H)",
        "        z = c_view(Af, (t * B + lo) * 4 * H, (R, 4 * H))",
        "        _panels(z, packed, dh, 0, npan)",
    ]
    src = "import numpy as np\nimport numba as nb\n" + vecmath.HEADER
    src += "from tapernn.backends.packed_kernels import _panels\n"
    src += f"ONE = np.{np.dtype(dtype).name}(1.0)\n"
    src += "\n".join(fwd) + "\n\n" + "\n".join(bwd) + "\n\n" + "\n".join(loops) + "\n"
    ns: dict = {}
    exec(compile(src, f"<proto_loop {np.dtype(dtype).name}>", "exec"), ns)  # noqa: S102
    return ns["cell_fwd"], ns["cell_bwd"], ns["floop"], ns["bloop"]


_pool = ThreadPoolExecutor(1)
_K: dict = {}


class Step:
    """FastLSTM step (h0 = c0 = 0): forward, backward with dX, dW. `whole`: one numba call per
    loop and half; else a Python loop calling the GEMM and the cell kernel per step."""

    def __init__(self, B, T, D, H, dtype, split, whole):
        from tapernn.backends.packed import pack_panels
        from tapernn.backends.packed_kernels import packed_matmul_serial

        self.pack, self.pmm = pack_panels, packed_matmul_serial
        self.B, self.T, self.D, self.H, self.dtype = B, T, D, H, np.dtype(dtype)
        self.split, self.whole = split, whole
        if self.dtype.name not in _K:
            _K[self.dtype.name] = kernels(dtype)
        self.cf, self.cb, self.floop, self.bloop = _K[self.dtype.name]
        rng = np.random.default_rng(1)
        s = 1 / np.sqrt(H)
        self.WxT = rng.uniform(-s, s, (D, 4 * H)).astype(dtype)
        self.WhT = rng.uniform(-s, s, (H, 4 * H)).astype(dtype)
        self.Wh = np.ascontiguousarray(self.WhT.T)
        self.Wx = np.ascontiguousarray(self.WxT.T)
        self.b = rng.uniform(-s, s, 4 * H).astype(dtype)
        e = lambda *s: np.zeros(s, dtype)
        self.X = e(T, B, 4 * H)
        self.A = e(T, B, 4 * H)
        self.C = e(T + 1, B, H)
        self.TC = e(T, B, H)
        self.Y = e(T + 1, B, H)
        self.dh, self.dc = e(B, H), e(B, H)
        self.dWxT, self.dWhT, self.db = e(D, 4 * H), e(H, 4 * H), e(4 * H)
        self.dX = e(T * B, D)
        h = B - B // 2
        self.rows = [(0, h), (h, B)] if split else [(0, B)]
        self.accs = [e(hi - lo, 4 * H) for lo, hi in self.rows]
        self.dhs = [e(hi - lo, H) for lo, hi in self.rows]
        self.dcs = [e(hi - lo, H) for lo, hi in self.rows]
        G = 4 * H
        self.cols = [slice(0, G // 2), slice(G // 2, G)] if split else [slice(0, G)]
        n = T * B // 2
        self.trows = [slice(0, n), slice(n, T * B)] if split else [slice(0, T * B)]
        self.parts = {}

    def _proj(self, x, k):
        tr = self.trows[k]
        np.matmul(
            x.reshape(self.T * self.B, -1)[tr], self.WxT, out=self.X.reshape(-1, 4 * self.H)[tr]
        )

    def _floop(self, k):
        lo, hi = self.rows[k]
        T, B, H = self.T, self.B, self.H
        acc = self.accs[k]
        Af, Xf, Cf, Hf, TCf = (a.reshape(-1) for a in (self.A, self.X, self.C, self.Y, self.TC))
        if self.whole:
            self.floop(Af, Xf, self.b, Cf, Hf, TCf, acc, self.Ph, T, B, lo, hi - lo, H)
            return
        for t in range(T):
            self.pmm(self.Y[t, lo:hi], self.Ph, acc)
            self.cf(Af, Xf, self.b, Cf, Hf, TCf, acc, t, B, lo, hi - lo, H)

    def _bloop(self, gy, k):
        lo, hi = self.rows[k]
        T, B, H = self.T, self.B, self.H
        dh, dc = self.dhs[k], self.dcs[k]
        dh[...] = 0
        dc[...] = 0
        Af, GYf, Cf, TCf = (a.reshape(-1) for a in (self.A, gy, self.C, self.TC))
        if self.whole:
            self.bloop(Af, dh, GYf, dc, Cf, TCf, self.PhT, T, B, lo, hi - lo, H)
            return
        for t in range(T - 1, -1, -1):
            self.cb(Af, dh, GYf, dc, Cf, TCf, t, B, lo, hi - lo, H)
            self.pmm(self.A[t, lo:hi], self.PhT, dh)

    def _grads(self, x, k):
        T, B = self.T, self.B
        cl, tr = self.cols[k], self.trows[k]
        Z = self.A.reshape(T * B, -1)
        np.matmul(x.reshape(T * B, -1).T, Z[:, cl], out=self.dWxT[:, cl])
        np.matmul(self.Y[1:T].reshape((T - 1) * B, -1).T, Z[B:, cl], out=self.dWhT[:, cl])
        np.sum(Z[:, cl], axis=0, out=self.db[cl])
        np.matmul(Z[tr], self.Wx, out=self.dX[tr])

    def _both(self, name, f, *a):
        t0 = time.thread_time()
        if not self.split:
            f(*a, 0)
        else:
            fut = _pool.submit(f, *a, 1)
            f(*a, 0)
            fut.result()
        self.parts[name] = self.parts.get(name, 0.0) + time.thread_time() - t0

    def __call__(self, x, gy):
        with blas_threads(1):
            t0 = time.thread_time()
            self.Ph = self.pack(self.WhT)  # (h @ U^T: U^T (H, 4H))
            self.PhT = self.pack(self.Wh)  # (dz @ U: U (4H, H))
            self.parts["pack"] = self.parts.get("pack", 0.0) + time.thread_time() - t0
            self._both("proj", self._proj, x)
            self._both("floop", self._floop)
            self._both("bloop", self._bloop, gy)
            self._both("grads", self._grads, x)
        return self.Y[1:]


def reference(x, gy, s):
    """NumPy equations of the same step (float64 check of the prototype)."""
    T, B, H = x.shape[0], x.shape[1], s.H
    h, c = np.zeros((B, H)), np.zeros((B, H))
    hs, cs, As, tcs = [h], [c], [], []
    sg = lambda v: 1 / (1 + np.exp(-v))
    for t in range(T):
        z = x[t] @ s.WxT + h @ s.WhT + s.b
        i, g, f, o = (
            sg(z[:, :H]),
            np.tanh(z[:, H : 2 * H]),
            sg(z[:, 2 * H : 3 * H]),
            sg(z[:, 3 * H :]),
        )
        c = f * c + i * g
        tc = np.tanh(c)
        h = o * tc
        hs.append(h), cs.append(c), As.append((i, g, f, o)), tcs.append(tc)
    dh, dc = np.zeros((B, H)), np.zeros((B, H))
    dZ = np.zeros((T, B, 4 * H))
    for t in range(T - 1, -1, -1):
        i, g, f, o = As[t]
        d_h = dh + gy[t]
        d = dc + d_h * o * (1 - tcs[t] ** 2)
        dZ[t] = np.concatenate(
            [
                d * g * i * (1 - i),
                d * i * (1 - g * g),
                d * cs[t] * f * (1 - f),
                d_h * tcs[t] * o * (1 - o),
            ],
            1,
        )
        dc = d * f
        dh = dZ[t] @ s.Wh
    Z = dZ.reshape(T * B, -1)
    return (
        np.stack(hs[1:]),
        Z @ s.Wx,
        x.reshape(T * B, -1).T @ Z,
        np.concatenate(hs[1:T]).T @ Z[B:],
        Z.sum(0),
    )


def check():
    for split in (False, True):
        for whole in (False, True):
            B, T, H = 5, 4, 16
            rng = np.random.default_rng(3)
            x, gy = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
            s = Step(B, T, H, H, "float64", split, whole)
            y = s(x, gy).copy()
            want = reference(x, gy, s)
            got = (y, s.dX, s.dWxT, s.dWhT, s.db)
            for w, g in zip(want, got):
                err = np.abs(w - g).max()
                assert err < 1e-12, (split, whole, err)
    print("check: prototype = NumPy equations at 1e-12 (f64, B = 5, split and not)")


def tn_step(B, T, H, dtype, x, g, own):
    import tapernn as tn
    from tapernn import nn

    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
    if own == "off":
        seq.set_plan_options(tn.PlanOptions(own_threads="off"))

    def step():
        if own == "off":
            with blas_threads(1):
                seq.forward(x)
                seq.zero_grad_parameters()
                seq.backward(x, g)
        else:
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, g)

    return step


def switches() -> int:
    """Voluntary context switches of this process's threads so far (a thread blocking: on the
    GIL, on a queue, on a join)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--arms", nargs="+", default=["whole2", "whole1", "py2", "py1", "tn2", "tn1", "torch"]
    )
    ap.add_argument("--batch", type=int, default=5)
    args = ap.parse_args()
    check()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)
        arms, steps = {}, {}
        for k in args.arms:
            if k in ("whole2", "whole1", "py2", "py1"):
                s = Step(B, T, H, H, args.dtype, k.endswith("2"), k.startswith("whole"))
                steps[k] = s
                arms[k] = lambda s=s, x=x, g=g: s(x, g)
            elif k in ("tn2", "tn1"):
                arms[k] = tn_step(B, T, H, args.dtype, x, g, "auto" if k == "tn2" else "off")
            elif k == "torch":
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                from proto_own import torch_step

                arms[k] = torch_step(B, T, H, "float32", x.astype(np.float32), g.astype(np.float32))
        for f in arms.values():
            for _ in range(5):
                f()
        for s in steps.values():
            s.parts = {}
        wall = {k: [] for k in arms}
        cpu = {k: [] for k in arms}
        sw = {k: [] for k in arms}
        for _ in range(args.reps):
            for k, f in arms.items():
                time.sleep(0.05)
                v0 = switches()
                c, t = time.process_time(), time.perf_counter()
                for _ in range(args.batch):
                    f()
                sw[k].append((switches() - v0) / args.batch)
                wall[k].append((time.perf_counter() - t) / args.batch)
                cpu[k].append((time.process_time() - c) / args.batch)
        base = np.median(wall["torch"]) if "torch" in wall else None
        for k in arms:
            r = f" = {np.median(wall[k]) / base:.2f}x torch" if base else ""
            print(
                f"({B},{T},{H}) {args.dtype} {k:7s} wall {np.median(wall[k]) * 1e3:7.2f} ms"
                f" (best {min(wall[k]) * 1e3:7.2f}), process CPU {np.median(cpu[k]) * 1e3:7.2f},"
                f" blocking switches {np.median(sw[k]):6.0f}{r}"
            )
        n = args.reps * args.batch
        for k, s in steps.items():
            print(
                f"  {k} caller-thread CPU per part (ms/step):",
                {p: round(v / n * 1e3, 2) for p, v in s.parts.items()},
            )
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
