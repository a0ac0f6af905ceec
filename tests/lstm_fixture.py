"""A per-gate LSTM written by hand with the functional API (four input and four recurrent
weight matrices), shared by the compiler tests and tools/bench_compiler.py."""

from __future__ import annotations

import numpy as np

import tapernn as tn
from tapernn import tracing

GATES = ("i", "f", "o", "g")


def lstm_arrays(T: int, B: int, I: int, H: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = [
        rng.standard_normal((T, B, I)),
        rng.standard_normal((B, H)) * 0.1,
        rng.standard_normal((B, H)) * 0.1,
    ]
    arrays += [rng.standard_normal((I, H)) / np.sqrt(I) for _ in GATES]
    arrays += [rng.standard_normal((H, H)) / np.sqrt(H) for _ in GATES]
    arrays += [rng.standard_normal(H) * 0.1 for _ in GATES]
    return arrays


def lstm_names() -> list[str]:
    return (
        ["x", "h0", "c0"]
        + [f"w_x{g}" for g in GATES]
        + [f"w_h{g}" for g in GATES]
        + [f"b_{g}" for g in GATES]
    )


def lstm_loss(x, h, c, wxi, wxf, wxo, wxg, whi, whf, who, whg, bi, bf, bo, bg):
    total = None
    for t in range(x.shape[0]):
        with tracing.step(t):
            xt = x[t]
            i = tn.sigmoid(xt @ wxi + h @ whi + bi)
            f = tn.sigmoid(xt @ wxf + h @ whf + bf)
            o = tn.sigmoid(xt @ wxo + h @ who + bo)
            g = tn.tanh(xt @ wxg + h @ whg + bg)
            c = f * c + i * g
            h = o * tn.tanh(c)
            term = tn.sum(h * h)
            total = term if total is None else total + term
    return total


def lstm_graph(T: int, B: int, I: int, H: int, seed: int = 0) -> tuple[tn.Graph, list]:
    arrays = lstm_arrays(T, B, I, H, seed)
    return tn.grad(tn.trace(lstm_loss, *arrays, names=lstm_names())), arrays


def fast_lstm_loss(x, h, c, wx, wh, b):
    """The same LSTM written FastLSTM-style: one (I, 4H) and one (H, 4H) weight, one bias."""
    H = h.shape[1]
    total = None
    for t in range(x.shape[0]):
        with tracing.step(t):
            z = x[t] @ wx + h @ wh + b
            i, f, o = (tn.sigmoid(z[:, k * H : (k + 1) * H]) for k in range(3))
            g = tn.tanh(z[:, 3 * H :])
            c = f * c + i * g
            h = o * tn.tanh(c)
            term = tn.sum(h * h)
            total = term if total is None else total + term
    return total


def fast_lstm_graph(T: int, B: int, I: int, H: int, seed: int = 0) -> tuple[tn.Graph, list]:
    a = lstm_arrays(T, B, I, H, seed)
    arrays = a[:3] + [
        np.concatenate(a[3:7], 1),
        np.concatenate(a[7:11], 1),
        np.concatenate(a[11:15]),
    ]
    return tn.grad(tn.trace(fast_lstm_loss, *arrays)), arrays
