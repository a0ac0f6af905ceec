"""Hand-written NumPy equations of Element-RNN's Seq* modules (SeqLSTM, SeqLSTMP, SeqGRU),
written from the Torch7 source's loops; they run on complex arrays, so complex-step
differentiation gives exact gradients of every parameter, input and initial-state entry."""

import numpy as np


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def keep_rows(x, mask_zero):
    """(B, 1): 0 where the row of x is all zeros (when masking)."""
    if not mask_zero:
        return np.ones(x.shape[:-1] + (1,))
    return (np.abs(x.real).sum(-1, keepdims=True) > 0).astype(float)


def seqlstm(p, x, h0, c0, mask_zero=False):
    """x (T, B, D); p: weight (D+R, 4H) blocks [i, f, o, g], bias (4H,), optional weight_o
    (H, R). Returns outputs (T, B, R)."""
    D = x.shape[-1]
    W, b = p["weight"], p["bias"]
    h, c, outs = h0, c0, []
    for xt in x:
        a = xt @ W[:D] + h @ W[D:] + b
        H = a.shape[-1] // 4
        i, f, o, g = (a[:, k * H : (k + 1) * H] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        if "weight_o" in p:
            h = h @ p["weight_o"]
        keep = keep_rows(xt, mask_zero)
        h, c = h * keep, c * keep
        outs.append(h)
    return np.stack(outs)


def seqgru(p, x, h0, mask_zero=False):
    D = x.shape[-1]
    W, b = p["weight"], p["bias"]
    H = W.shape[1] // 3
    h, outs = h0, []
    for xt in x:
        g = xt @ W[:D] + b
        r = sigmoid(g[:, :H] + h @ W[D:, :H])
        u = sigmoid(g[:, H : 2 * H] + h @ W[D:, H : 2 * H])
        hc = np.tanh(g[:, 2 * H :] + (r * h) @ W[D:, 2 * H :])
        h = ((1 - u) * hc + u * h) * keep_rows(xt, mask_zero)
        outs.append(h)
    return np.stack(outs)


def complex_step_grads(fn, arrays, seed):
    """d sum(seed * fn(**arrays)) / d(every entry of every array), exact to ~1e-15."""
    eps = 1e-30
    grads = {}
    for name, value in arrays.items():
        g = np.zeros(value.shape)
        for idx in np.ndindex(value.shape):
            pert = value.astype(complex)
            pert[idx] += 1j * eps
            g[idx] = np.sum(seed * fn(**dict(arrays, **{name: pert}))).imag / eps
        grads[name] = g
    return grads
