"""What a user would pick instead of tapernn, timed in the same run: PyTorch's nn.LSTM (when
importable; never a dependency) and the bare GEMMs of a step (the BLAS rate any NumPy
implementation is bound by). `need_dx=False` drops the input gradient on every side."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .timing import Contender, lstm_flops


def make_gemm_step(
    B: int, T: int, D: int, H: int, dtype, orientation: str, need_dx: bool = True
) -> Callable[[], None]:
    """Only the GEMMs of one training step, with the reference's shapes and operand layouts: the
    BLAS rate these shapes allow is the physical limit for any NumPy implementation."""
    rng = np.random.default_rng(0)
    r = lambda *shape: rng.standard_normal(shape).astype(dtype)
    x, w_i, w_h = r(T * B, D), r(4 * H, D), r(4 * H, H)
    dgates, hs, gates = r(T * B, 4 * H), r(T * B, H), np.empty((T * B, 4 * H), dtype)
    dw_i, dw_h, dx = np.empty_like(w_i), np.empty_like(w_h), np.empty_like(x)
    if orientation == "batch":
        h_t, dg_t = r(B, H), r(B, 4 * H)
        rec, dh = np.empty((B, 4 * H), dtype), np.empty((B, H), dtype)
        w_h_t = np.ascontiguousarray(w_h.T)  # the reference keeps W_h^T contiguous (NN GEMM)
        recurrent = lambda: np.matmul(h_t, w_h_t, out=rec)
        back = lambda: np.matmul(dg_t, w_h, out=dh)
    else:
        h_t, dg_t = r(H, B), r(4 * H, B)
        rec, dh = np.empty((4 * H, B), dtype), np.empty((H, B), dtype)
        recurrent = lambda: np.matmul(w_h, h_t, out=rec)
        back = lambda: np.matmul(w_h.T, dg_t, out=dh)

    def step() -> None:
        np.matmul(x, w_i.T, out=gates)
        for _ in range(T):
            recurrent()
        for _ in range(T):
            back()
        np.matmul(dgates.T, x, out=dw_i)
        np.matmul(dgates.T, hs, out=dw_h)
        if need_dx:
            np.matmul(dgates, w_i, out=dx)

    return step


def make_torch_contenders(
    B, T, D, H, dtype, x, grad_h, threads, need_dx: bool = True, one_thread: bool = False
) -> list[Contender]:
    """torch.nn.LSTM's training step (none: torch is not importable) with `threads` (None:
    torch's default), and with `one_thread` also at 1 thread when that is not the default
    (at tiny shapes torch's fastest: its pool's barrier waits for a descheduled worker on a
    busy machine). Each contender sets its thread count untimed before its calls; with
    need_dx=False the input does not require grad, so autograd skips dX as a PyTorch user
    training on data gets it."""
    try:
        import torch
    except ImportError:
        return []
    default = threads or torch.get_num_threads()
    tdtype = {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]
    lstm = torch.nn.LSTM(D, H).to(tdtype)
    xt = torch.from_numpy(x).requires_grad_(need_dx)
    gt = torch.from_numpy(grad_h)

    def step() -> None:
        lstm.zero_grad(set_to_none=True)
        xt.grad = None
        out, _ = lstm(xt)
        out.backward(gt)

    def threads_setter(n: int):
        def setup() -> None:
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)

        return setup

    name = f"torch {torch.__version__} nn.LSTM"
    flops = lstm_flops(B, T, D, H, dx=need_dx)
    counts = [default] + ([1] if one_thread and default != 1 else [])
    return [
        Contender(
            name + (f" ({n} thr)" if len(counts) > 1 else ""),
            step,
            flops,
            peer=True,
            setup=threads_setter(n),
        )
        for n in counts
    ]
