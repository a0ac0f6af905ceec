"""Hand-written NumPy FastLSTM training step: the floor a NumPy framework can reach (fused gates,
one GEMM for all input projections, preallocated buffers, analytic BPTT). Not part of the library.
"""

from __future__ import annotations

import numpy as np

# Measured interleaved, single BLAS thread (2-core SkylakeX, OpenBLAS 0.3.31, busy shared box):
# once batch-major keeps W_h^T contiguous (an NN GEMM), it beat feature-major by 3-10% in float32
# and tied or won by up to 15% in float64: the (4H x H)(H x B) GEMM gains less than the edge
# transposes cost. Before that fix feature-major won float32 by 5-25%. Re-measure with
# `bench.py --orientation`. Under CPU contention with 2 BLAS threads feature-major degrades less.
DEFAULT_ORIENTATION = {np.dtype(np.float32): "batch", np.dtype(np.float64): "batch"}


def lstm_parameter_count(D: int, H: int) -> int:
    """FastLSTM's (and the reference's) parameters: W_x (4H x D), W_h (4H x H) and one bias."""
    return 4 * H * (D + H) + 4 * H


def theoretical_min_bptt_bytes(
    B: int, T: int, D: int, H: int, dtype, n_params: int | None = None
) -> int:
    """Fewest bytes a BPTT training step must hold at one instant without recomputing any
    GEMM: ``max(T*B*5H, P + T*B*D) * itemsize``, P the parameter count (default: the LSTM's,
    4H(D+H) + 4H). Two lower bounds on the peak, the larger one counts:

    - when backward starts, what forward kept for it: per step the four gate activations
      i, g, f, o (4H; pre-activations would do equally) and the cell c_t (H). c_{t-1} feeds df,
      tanh(c_t) feeds do and dc and is one elementwise pass from c_t. h_{t-1} (needed by dW_h)
      is not counted: the stacked h_t are the forward's *output*, which exists anyway, and
      h_t = o_t * tanh(c_t) is elementwise-recomputable. The input x is the caller's. Going lower
      means recomputing the gates' GEMMs from (x_t, h_{t-1}) (checkpointing), not "keeping".
    - when backward ends, what it returns: a gradient for every parameter (P) and for the input
      sequence (T*B*D). This bound wins only on tiny models ((1, 5, 5): 245 vs 125 elements).
    """
    P = lstm_parameter_count(D, H) if n_params is None else n_params
    return max(min_saved_bytes(B, T, H, dtype), (P + T * B * D) * np.dtype(dtype).itemsize)


def min_saved_bytes(B: int, T: int, H: int, dtype) -> int:
    """The first bound alone: what forward must keep for backward, ``T*B*5H*itemsize``."""
    return T * B * 5 * H * np.dtype(dtype).itemsize


def gate_affine(H: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectors over the [i, g, f, o] blocks that let one tanh activate all four gates at once:
    sigma(a) = 0.5 * tanh(0.5 * a) + 0.5 and tanh(a) = 1.0 * tanh(1.0 * a) + 0.0, so
    act = tanh(scale * a) * scale + offset. `scale` is folded into the weights before the GEMMs.
    `slope` gives the derivatives blockwise from the activations:
    act * (slope - act) + (1 - slope) = s(1 - s) for sigmoid gates and 1 - g^2 for g."""
    blocks = lambda i, g: np.repeat(np.array([i, g, i, i], dtype), H)
    slope = blocks(1.0, 0.0)
    return blocks(0.5, 1.0), blocks(0.5, 0.0), slope, 1.0 - slope


def _cell_forward(block, gates: list, c_prev, c, tanh_c, h, tmp, scale, offset) -> None:
    """`block` holds scaled pre-activations on entry, activations on exit; writes c, tanh c, h."""
    np.tanh(block, out=block)
    block *= scale
    block += offset
    i, g, f, o = gates
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=tmp)
    c += tmp
    np.tanh(c, out=tanh_c)
    np.multiply(o, tanh_c, out=h)


def _cell_backward(
    block,
    dblock,
    gates: list,
    dgates: list,
    dh,
    dc,
    c_prev,
    tanh_c,
    tmp,
    slope_block,
    slope,
    one_minus_slope,
) -> None:
    """Writes d(pre-activation) into dblock; dc holds dL/dc_t on entry, dL/dc_{t-1} on exit."""
    i, g, f, o = gates
    di, dg, df, do = dgates
    np.multiply(dh, tanh_c, out=do)
    np.multiply(tanh_c, tanh_c, out=tmp)  # dc += dh * o * (1 - tanh(c)^2)
    np.subtract(1.0, tmp, out=tmp)
    tmp *= o
    tmp *= dh
    dc += tmp
    np.multiply(dc, g, out=di)
    np.multiply(dc, i, out=dg)
    np.multiply(dc, c_prev, out=df)
    np.subtract(slope, block, out=slope_block)  # activation derivatives, all gates at once
    slope_block *= block
    slope_block += one_minus_slope
    dblock *= slope_block
    dc *= f


class _Kernel:
    """Buffers for one (B, T) and the BPTT loops; subclasses fix the recurrent GEMM orientation."""

    gate_axis: int  # axis of a step's gate block that runs over the 4H gate units

    def __init__(self, B: int, T: int, D: int, H: int, dtype) -> None:
        self.B, self.T, self.D, self.H = B, T, D, H
        as_column = (lambda v: v[:, None]) if self.gate_axis == 0 else (lambda v: v)
        self.scale, self.offset, self.slope, self.one_minus_slope = (
            as_column(v) for v in gate_affine(H, dtype)
        )
        self.buffers = {name: np.empty(shape, dtype) for name, shape in self.shapes().items()}

    def shapes(self) -> dict[str, tuple]:
        raise NotImplementedError

    def _split(self, a: np.ndarray) -> list:
        H = self.H
        index = (slice(None),) * self.gate_axis
        return [a[index + (slice(k * H, (k + 1) * H),)] for k in range(4)]

    def forward(self, x, w_i, bias, w_h) -> np.ndarray:
        b = self.buffers
        scale = self.scale.reshape(-1)
        # the gates' pre-scaling folded into the weights: 4H x (D + H) work, not T x B x 4H
        np.multiply(w_i, scale[:, None], out=b["w_i_scaled"])
        w_h_scaled = b["w_h_scaled"]
        if self.gate_axis == 1:
            # batch-major multiplies h from the left: keep W_h^T contiguous so the recurrent GEMM
            # is NN; the NT form ran 1.3-1.6x slower in float32 here (OpenBLAS 0.3.31)
            w_h_scaled = w_h_scaled.T
        np.multiply(w_h, scale[:, None], out=w_h_scaled)
        np.multiply(bias, scale, out=b["bias_scaled"])
        gates, h, c = self.project(x), b["h"], b["c"]
        h[0] = 0.0
        c[0] = 0.0
        for t in range(self.T):
            if t > 0:  # h_0 = 0: the first recurrent GEMM would add zeros
                gates[t] += self.recurrent(h[t])
            _cell_forward(
                gates[t],
                self._split(gates[t]),
                c[t],
                c[t + 1],
                b["tanh_c"][t],
                h[t + 1],
                b["tmp"],
                self.scale,
                self.offset,
            )
        return self.output()

    def backward(self, x, grad_h, w_i, w_h, grads: dict, need_dx: bool = True) -> None:
        b = self.buffers
        gates, dgates, dh, dc = b["gates"], b["dgates"], b["dh"], b["dc"]
        grad_h = self.step_major(grad_h)
        dc[...] = 0.0
        for t in reversed(range(self.T)):
            if t == self.T - 1:
                dh[...] = grad_h[t]
            else:
                self.back_recurrent(dgates[t + 1], w_h, out=dh)
                dh += grad_h[t]
            _cell_backward(
                gates[t],
                dgates[t],
                self._split(gates[t]),
                self._split(dgates[t]),
                dh,
                dc,
                b["c"][t],
                b["tanh_c"][t],
                b["tmp"],
                b["slope_block"],
                self.slope,
                self.one_minus_slope,
            )
        self.weight_grads(x, w_i, grads, need_dx)
        if need_dx:
            grads["x"] = b["dx"]
        else:
            grads.pop("x", None)


class _BatchMajor(_Kernel):
    """Steps are (B, 4H) rows: recurrent GEMM (B x H)(H x 4H); no layout copies at all."""

    gate_axis = 1

    def shapes(self) -> dict[str, tuple]:
        B, T, D, H = self.B, self.T, self.D, self.H
        return {
            "gates": (T, B, 4 * H),
            "dgates": (T, B, 4 * H),
            "h": (T + 1, B, H),
            "c": (T + 1, B, H),
            "tanh_c": (T, B, H),
            "rec": (B, 4 * H),
            "slope_block": (B, 4 * H),
            "dh": (B, H),
            "dc": (B, H),
            "tmp": (B, H),
            "dx": (T, B, D),
            "w_i_scaled": (4 * H, D),
            "w_h_scaled": (H, 4 * H),
            "bias_scaled": (4 * H,),
        }

    def project(self, x) -> np.ndarray:
        b, TB = self.buffers, self.T * self.B
        np.matmul(x.reshape(TB, self.D), b["w_i_scaled"].T, out=b["gates"].reshape(TB, -1))
        b["gates"] += b["bias_scaled"]
        return b["gates"]

    def recurrent(self, h_prev) -> np.ndarray:
        return np.matmul(h_prev, self.buffers["w_h_scaled"], out=self.buffers["rec"])

    def back_recurrent(self, dgates_next, w_h, out) -> None:
        np.matmul(dgates_next, w_h, out=out)

    def step_major(self, grad_h) -> np.ndarray:
        return grad_h

    def output(self) -> np.ndarray:
        return self.buffers["h"][1:]

    def weight_grads(self, x, w_i, grads: dict, need_dx: bool) -> None:
        b, TB, H = self.buffers, self.T * self.B, self.H
        stacked = b["dgates"].reshape(TB, 4 * H)
        np.matmul(stacked.T, x.reshape(TB, self.D), out=grads["i2g.weight"])
        np.sum(stacked, axis=0, out=grads["i2g.bias"])
        np.matmul(stacked.T, b["h"][: self.T].reshape(TB, H), out=grads["o2g.weight"])
        if need_dx:
            np.matmul(stacked, w_i, out=b["dx"].reshape(TB, self.D))


class _FeatureMajor(_Kernel):
    """Steps are (4H, B) columns: recurrent GEMM (4H x H)(H x B), gate blocks contiguous. Pays
    transposed copies at the edges (projection, grad_h, h out, stacked dgates and h for dW)."""

    gate_axis = 0

    def shapes(self) -> dict[str, tuple]:
        B, T, D, H = self.B, self.T, self.D, self.H
        return {
            "proj": (T, B, 4 * H),
            "gates": (T, 4 * H, B),
            "dgates": (T, 4 * H, B),
            "h": (T + 1, H, B),
            "c": (T + 1, H, B),
            "tanh_c": (T, H, B),
            "rec": (4 * H, B),
            "slope_block": (4 * H, B),
            "dh": (H, B),
            "dc": (H, B),
            "tmp": (H, B),
            "grad_h": (T, H, B),
            "h_out": (T, B, H),
            "h_prev": (T, B, H),
            "dgates_stacked": (4 * H, T, B),
            "dx": (T, B, D),
            "w_i_scaled": (4 * H, D),
            "w_h_scaled": (4 * H, H),
            "bias_scaled": (4 * H,),
        }

    def project(self, x) -> np.ndarray:
        b, TB = self.buffers, self.T * self.B
        np.matmul(x.reshape(TB, self.D), b["w_i_scaled"].T, out=b["proj"].reshape(TB, -1))
        np.add(b["proj"].transpose(0, 2, 1), b["bias_scaled"][:, None], out=b["gates"])
        return b["gates"]

    def recurrent(self, h_prev) -> np.ndarray:
        return np.matmul(self.buffers["w_h_scaled"], h_prev, out=self.buffers["rec"])

    def back_recurrent(self, dgates_next, w_h, out) -> None:
        np.matmul(w_h.T, dgates_next, out=out)

    def step_major(self, grad_h) -> np.ndarray:
        self.buffers["grad_h"][...] = grad_h.transpose(0, 2, 1)
        return self.buffers["grad_h"]

    def output(self) -> np.ndarray:
        self.buffers["h_out"][...] = self.buffers["h"][1:].transpose(0, 2, 1)
        return self.buffers["h_out"]

    def weight_grads(self, x, w_i, grads: dict, need_dx: bool) -> None:
        b, TB, H = self.buffers, self.T * self.B, self.H
        b["dgates_stacked"][...] = b["dgates"].transpose(1, 0, 2)
        stacked = b["dgates_stacked"].reshape(4 * H, TB)
        b["h_prev"][...] = b["h"][: self.T].transpose(0, 2, 1)
        np.matmul(stacked, x.reshape(TB, self.D), out=grads["i2g.weight"])
        np.sum(stacked, axis=1, out=grads["i2g.bias"])
        np.matmul(stacked, b["h_prev"].reshape(TB, H), out=grads["o2g.weight"])
        if need_dx:
            np.matmul(stacked.T, w_i, out=b["dx"].reshape(TB, self.D))


_KERNELS = {"batch": _BatchMajor, "feature": _FeatureMajor}


class ReferenceLSTM:
    """Torch7 ``nn.FastLSTM`` training step written by hand in NumPy, zero initial state.

    Weights use the Torch layout (out, in): ``i2g.weight`` (4H, D), ``i2g.bias`` (4H),
    ``o2g.weight`` (4H, H); gate blocks ordered [i, g, f, o]. Buffers are allocated once per
    (B, T) and reused, so arrays returned by `step` are overwritten by the next call.

    Shapes: x (T, B, D), grad_h (T, B, H) -> h (T, B, H), grads of the weights and x.
    """

    def __init__(
        self, D: int, H: int, dtype=np.float64, orientation: str | None = None, seed: int = 0
    ) -> None:
        self.D, self.H, self.dtype = D, H, np.dtype(dtype)
        self.orientation = orientation or DEFAULT_ORIENTATION[self.dtype]
        rng = np.random.default_rng(seed)
        u = lambda bound, *shape: rng.uniform(-bound, bound, shape).astype(self.dtype)
        self.params = {
            "i2g.weight": u(D**-0.5, 4 * H, D),
            "i2g.bias": u(D**-0.5, 4 * H),
            "o2g.weight": u(H**-0.5, 4 * H, H),
        }
        self.grads = {k: np.empty_like(v) for k, v in self.params.items()}
        self._kernels: dict[tuple[int, int], _Kernel] = {}

    def _kernel(self, B: int, T: int):
        key = (B, T)
        if key not in self._kernels:
            self._kernels[key] = _KERNELS[self.orientation](B, T, self.D, self.H, self.dtype)
        return self._kernels[key]

    def step(
        self, x: np.ndarray, grad_h: np.ndarray, need_grad_input: bool = True
    ) -> tuple[np.ndarray, dict]:
        """Forward, BPTT and parameter gradients for one sequence batch (and the input's, under
        grads["x"], unless need_grad_input is False: then its GEMM is skipped)."""
        T, B, _ = x.shape
        x = np.ascontiguousarray(x, dtype=self.dtype)
        grad_h = np.ascontiguousarray(grad_h, dtype=self.dtype)
        p = self.params
        kernel = self._kernel(B, T)
        h = kernel.forward(x, p["i2g.weight"], p["i2g.bias"], p["o2g.weight"])
        kernel.backward(x, grad_h, p["i2g.weight"], p["o2g.weight"], self.grads, need_grad_input)
        return h, self.grads

    def workspace_bytes(self) -> int:
        """Bytes of all preallocated buffers (every (B, T) seen so far), gradients included."""
        buffers = [a for k in self._kernels.values() for a in k.buffers.values()]
        return sum(a.nbytes for a in buffers) + sum(
            g.nbytes for name, g in self.grads.items() if name != "x"
        )
