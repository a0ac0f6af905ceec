"""Hand-written NumPy FastLSTM training step: the floor a NumPy framework can reach (fused gates,
one GEMM for all input projections, preallocated buffers, analytic BPTT). Not part of the library.
"""
from __future__ import annotations

import numpy as np

# Measured with tools/bench.py on a 2-core SkylakeX / OpenBLAS 0.3.31 box (see the bench report):
# the feature-major recurrent GEMM is slower at B=32 because its extra transposed copies cost more
# than BLAS gains from a (4H x H)(H x B) shape. Re-measure with `bench.py --orientation`.
DEFAULT_ORIENTATION = {np.dtype(np.float32): "batch", np.dtype(np.float64): "batch"}


def theoretical_min_bptt_bytes(B: int, T: int, D: int, H: int, dtype) -> int:
    """Fewest bytes a BPTT training step must keep from forward for backward, without
    recomputing any GEMM: ``T * B * 5H * itemsize``.

    Per step the backward needs the four gate activations i, g, f, o (4H; pre-activations
    would do equally) and the cell c_t (H): c_{t-1} feeds df, tanh(c_t) feeds do and dc and is one
    elementwise pass from c_t. h_{t-1} (needed by dW_h) is not counted: the stacked h_t are the
    forward's *output*, which exists anyway, and h_t = o_t * tanh(c_t) is elementwise-recomputable.
    The input x (D) is the caller's and not counted either. Going lower means recomputing the
    gates' GEMMs from (x_t, h_{t-1}) (checkpointing, 2H per step), which we do not count as
    "keeping". D does not appear: it is in the signature so all sizing functions agree.
    """
    return T * B * 5 * H * np.dtype(dtype).itemsize


def _sigmoid(a: np.ndarray, out: np.ndarray) -> None:
    # sigma(a) = (tanh(a/2) + 1) / 2: no exp overflow warnings for large |a|, all in place
    np.multiply(a, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5


def _scale_by_sigmoid_grad(d: np.ndarray, s: np.ndarray, tmp: np.ndarray) -> None:
    # d *= s * (1 - s), s being a sigmoid output
    np.subtract(1.0, s, out=tmp)
    tmp *= s
    d *= tmp


def _cell_forward(gates: list, c_prev, c, tanh_c, h, tmp) -> None:
    """Gates hold pre-activations on entry and activations on exit; writes c, tanh(c), h."""
    i, g, f, o = gates
    _sigmoid(i, i)
    np.tanh(g, out=g)
    _sigmoid(f, f)
    _sigmoid(o, o)
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=tmp)
    c += tmp
    np.tanh(c, out=tanh_c)
    np.multiply(o, tanh_c, out=h)


def _cell_backward(gates: list, dgates: list, dh, dc, c_prev, tanh_c, tmp) -> None:
    """Writes d(pre-activation) into dgates; dc holds dL/dc_t on entry, dL/dc_{t-1} on exit."""
    i, g, f, o = gates
    di, dg, df, do = dgates
    np.multiply(dh, tanh_c, out=do)
    _scale_by_sigmoid_grad(do, o, tmp)
    np.multiply(tanh_c, tanh_c, out=tmp)  # dc += dh * o * (1 - tanh(c)^2)
    np.subtract(1.0, tmp, out=tmp)
    tmp *= o
    tmp *= dh
    dc += tmp
    np.multiply(dc, g, out=di)
    _scale_by_sigmoid_grad(di, i, tmp)
    np.multiply(g, g, out=tmp)  # dg = dc * i * (1 - g^2)
    np.subtract(1.0, tmp, out=tmp)
    tmp *= i
    np.multiply(dc, tmp, out=dg)
    np.multiply(dc, c_prev, out=df)
    _scale_by_sigmoid_grad(df, f, tmp)
    dc *= f


class _BatchMajor:
    """Steps are (B, 4H) rows: recurrent GEMM (B x H)(H x 4H); no layout copies at all."""

    def __init__(self, B: int, T: int, D: int, H: int, dtype) -> None:
        e = lambda *shape: np.empty(shape, dtype)  # noqa: E731
        self.B, self.T, self.D, self.H = B, T, D, H
        self.buffers = dict(gates=e(T, B, 4 * H), dgates=e(T, B, 4 * H), h=e(T + 1, B, H),
                            c=e(T + 1, B, H), tanh_c=e(T, B, H), rec=e(B, 4 * H), dh=e(B, H),
                            dc=e(B, H), tmp=e(B, H), dx=e(T, B, D))

    def _split(self, a: np.ndarray) -> list:
        H = self.H
        return [a[:, k * H:(k + 1) * H] for k in range(4)]

    def forward(self, x, w_i, bias, w_h) -> np.ndarray:
        T, B, D, H = self.T, self.B, self.D, self.H
        b = self.buffers
        gates, h, c = b["gates"], b["h"], b["c"]
        np.matmul(x.reshape(T * B, D), w_i.T, out=gates.reshape(T * B, 4 * H))
        gates += bias
        h[0] = 0.0
        c[0] = 0.0
        for t in range(T):
            if t > 0:  # h_0 = 0: the first recurrent GEMM would add zeros
                np.matmul(h[t], w_h.T, out=b["rec"])
                gates[t] += b["rec"]
            _cell_forward(self._split(gates[t]), c[t], c[t + 1], b["tanh_c"][t], h[t + 1], b["tmp"])
        return h[1:]

    def backward(self, x, grad_h, w_i, w_h, grads: dict) -> None:
        T, B, D, H = self.T, self.B, self.D, self.H
        b = self.buffers
        dgates, dh, dc = b["dgates"], b["dh"], b["dc"]
        dc[...] = 0.0
        for t in reversed(range(T)):
            if t == T - 1:
                dh[...] = grad_h[t]
            else:
                np.matmul(dgates[t + 1], w_h, out=dh)
                dh += grad_h[t]
            _cell_backward(self._split(b["gates"][t]), self._split(dgates[t]), dh, dc,
                           b["c"][t], b["tanh_c"][t], b["tmp"])
        stacked = dgates.reshape(T * B, 4 * H)
        np.matmul(stacked.T, x.reshape(T * B, D), out=grads["i2g.weight"])
        np.sum(stacked, axis=0, out=grads["i2g.bias"])
        np.matmul(stacked.T, b["h"][:T].reshape(T * B, H), out=grads["o2g.weight"])
        np.matmul(stacked, w_i, out=b["dx"].reshape(T * B, D))
        grads["x"] = b["dx"]


class _FeatureMajor:
    """Steps are (4H, B) columns: recurrent GEMM (4H x H)(H x B), gate blocks contiguous. Pays
    transposed copies at the edges (projection, grad_h, h out, stacked dgates and h for dW)."""

    def __init__(self, B: int, T: int, D: int, H: int, dtype) -> None:
        e = lambda *shape: np.empty(shape, dtype)  # noqa: E731
        self.B, self.T, self.D, self.H = B, T, D, H
        self.buffers = dict(proj=e(T, B, 4 * H), gates=e(T, 4 * H, B), dgates=e(T, 4 * H, B),
                            h=e(T + 1, H, B), c=e(T + 1, H, B), tanh_c=e(T, H, B),
                            rec=e(4 * H, B), dh=e(H, B), dc=e(H, B), tmp=e(H, B),
                            grad_h=e(T, H, B), h_out=e(T, B, H), h_prev=e(T, B, H),
                            dgates_stacked=e(4 * H, T, B), dx=e(T, B, D))

    def _split(self, a: np.ndarray) -> list:
        H = self.H
        return [a[k * H:(k + 1) * H] for k in range(4)]

    def forward(self, x, w_i, bias, w_h) -> np.ndarray:
        T, B, D, H = self.T, self.B, self.D, self.H
        b = self.buffers
        gates, h, c = b["gates"], b["h"], b["c"]
        np.matmul(x.reshape(T * B, D), w_i.T, out=b["proj"].reshape(T * B, 4 * H))
        np.add(b["proj"].transpose(0, 2, 1), bias[:, None], out=gates)
        h[0] = 0.0
        c[0] = 0.0
        for t in range(T):
            if t > 0:
                np.matmul(w_h, h[t], out=b["rec"])
                gates[t] += b["rec"]
            _cell_forward(self._split(gates[t]), c[t], c[t + 1], b["tanh_c"][t], h[t + 1], b["tmp"])
        b["h_out"][...] = h[1:].transpose(0, 2, 1)
        return b["h_out"]

    def backward(self, x, grad_h, w_i, w_h, grads: dict) -> None:
        T, B, D, H = self.T, self.B, self.D, self.H
        b = self.buffers
        dgates, dh, dc, gh = b["dgates"], b["dh"], b["dc"], b["grad_h"]
        gh[...] = grad_h.transpose(0, 2, 1)
        dc[...] = 0.0
        for t in reversed(range(T)):
            if t == T - 1:
                dh[...] = gh[t]
            else:
                np.matmul(w_h.T, dgates[t + 1], out=dh)
                dh += gh[t]
            _cell_backward(self._split(b["gates"][t]), self._split(dgates[t]), dh, dc,
                           b["c"][t], b["tanh_c"][t], b["tmp"])
        b["dgates_stacked"][...] = dgates.transpose(1, 0, 2)
        stacked = b["dgates_stacked"].reshape(4 * H, T * B)
        b["h_prev"][...] = b["h"][:T].transpose(0, 2, 1)
        np.matmul(stacked, x.reshape(T * B, D), out=grads["i2g.weight"])
        np.sum(stacked, axis=1, out=grads["i2g.bias"])
        np.matmul(stacked, b["h_prev"].reshape(T * B, H), out=grads["o2g.weight"])
        np.matmul(stacked.T, w_i, out=b["dx"].reshape(T * B, D))
        grads["x"] = b["dx"]


_KERNELS = {"batch": _BatchMajor, "feature": _FeatureMajor}


class ReferenceLSTM:
    """Torch7 ``nn.FastLSTM`` training step written by hand in NumPy, zero initial state.

    Weights use the Torch layout (out, in): ``i2g.weight`` (4H, D), ``i2g.bias`` (4H),
    ``o2g.weight`` (4H, H); gate blocks ordered [i, g, f, o]. Buffers are allocated once per
    (B, T) and reused, so arrays returned by `step` are overwritten by the next call.

    Shapes: x (T, B, D), grad_h (T, B, H) -> h (T, B, H), grads of the weights and x.
    """

    def __init__(self, D: int, H: int, dtype=np.float64, orientation: str | None = None,
                 seed: int = 0) -> None:
        self.D, self.H, self.dtype = D, H, np.dtype(dtype)
        self.orientation = orientation or DEFAULT_ORIENTATION[self.dtype]
        rng = np.random.default_rng(seed)
        u = lambda bound, *shape: rng.uniform(-bound, bound, shape).astype(self.dtype)  # noqa: E731
        self.params = {"i2g.weight": u(D ** -0.5, 4 * H, D), "i2g.bias": u(D ** -0.5, 4 * H),
                       "o2g.weight": u(H ** -0.5, 4 * H, H)}
        self.grads = {k: np.empty_like(v) for k, v in self.params.items()}
        self._kernels: dict[tuple[int, int], _BatchMajor | _FeatureMajor] = {}

    def _kernel(self, B: int, T: int):
        key = (B, T)
        if key not in self._kernels:
            self._kernels[key] = _KERNELS[self.orientation](B, T, self.D, self.H, self.dtype)
        return self._kernels[key]

    def step(self, x: np.ndarray, grad_h: np.ndarray) -> tuple[np.ndarray, dict]:
        """Forward, BPTT and parameter gradients for one sequence batch."""
        T, B, _ = x.shape
        x = np.ascontiguousarray(x, dtype=self.dtype)
        grad_h = np.ascontiguousarray(grad_h, dtype=self.dtype)
        p = self.params
        kernel = self._kernel(B, T)
        h = kernel.forward(x, p["i2g.weight"], p["i2g.bias"], p["o2g.weight"])
        kernel.backward(x, grad_h, p["i2g.weight"], p["o2g.weight"], self.grads)
        return h, self.grads

    def workspace_bytes(self) -> int:
        """Bytes of all preallocated buffers (every (B, T) seen so far), gradients included."""
        buffers = [a for k in self._kernels.values() for a in k.buffers.values()]
        return sum(a.nbytes for a in buffers) + sum(
            g.nbytes for name, g in self.grads.items() if name != "x")
