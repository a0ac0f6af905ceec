"""The numba side of an in-place SGD step, data -= lr * step (optim.subtract_scaled): one loop,
no temporary. NumPy's form makes `lr * step` -- the whole array when it is small, the peak of a
(1, 5, 5) numba training loop (BENCHMARKS.md htiny7). Bit for bit NumPy's: lr in the arrays'
dtype (a Python float is cast to it, NEP 50), product then difference in that dtype, each
rounded (numba fuses no multiply-add without fastmath). Imported only once numba is."""

from __future__ import annotations

from numba import njit

from .numba_opt import keyed


@njit(cache=keyed(), nogil=True, error_model="numpy")
def sub_scaled(data, step, lr):
    d = data.reshape(data.size)  # (C-contiguous: views)
    s = step.reshape(step.size)
    for i in range(d.size):
        d[i] = d[i] - lr * s[i]


@njit(cache=keyed(), nogil=True, error_model="numpy")
def add_flat(grads, parts):
    """grads[k] += parts[k] for every k (tuples of 1-D C arrays of one dtype, pairwise of one
    size): NumPy's `grad += part` bit for bit (one rounded add an element), one call for all
    of a steady backward's parameter gradients (nn.steady: numba_program.scratch_runner)."""
    for k in range(len(grads)):
        g, p = grads[k], parts[k]
        for i in range(g.size):
            g[i] = g[i] + p[i]
