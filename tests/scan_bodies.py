"""Step bodies for the scan tests (RNN, LSTM, GRU-like, random) and their NumPy equations,
written here independently of tapernn's scan (the oracle of tests/test_scan*.py)."""

from __future__ import annotations

import numpy as np

import tapernn as tn


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def rnn_body(B, D, H, dtype=np.float64):
    """h' = tanh(x W + h U + b); carries [h], ys [h']."""

    def step(h, x, W, U, b):
        h2 = tn.tanh(x @ W + h @ U + b)
        return [h2, h2]

    return tn.trace(
        step,
        np.zeros((B, H), dtype),
        np.zeros((B, D), dtype),
        np.zeros((D, H), dtype),
        np.zeros((H, H), dtype),
        np.zeros(H, dtype),
        names=["h", "x", "W", "U", "b"],
    )


def rnn_numpy(h, xs, W, U, b, reverse=False):
    ys = np.empty(xs.shape[:2] + (W.shape[1],), xs.dtype)
    for t in range(len(xs) - 1, -1, -1) if reverse else range(len(xs)):
        h = np.tanh(xs[t] @ W + h @ U + b)
        ys[t] = h
    return h, ys


def lstm_body(B, D, H, dtype=np.float64):
    """Fused-gate LSTM: carries [h, c], ys [h', c'] ."""

    def step(h, c, x, W, U, b):
        z = x @ W + h @ U + b
        i, f = tn.sigmoid(z[:, :H]), tn.sigmoid(z[:, H : 2 * H])
        o, g = tn.sigmoid(z[:, 2 * H : 3 * H]), tn.tanh(z[:, 3 * H :])
        c2 = f * c + i * g
        h2 = o * tn.tanh(c2)
        return [h2, c2, h2, c2]

    z = np.zeros
    return tn.trace(
        step,
        z((B, H), dtype),
        z((B, H), dtype),
        z((B, D), dtype),
        z((D, 4 * H), dtype),
        z((H, 4 * H), dtype),
        z(4 * H, dtype),
        names=["h", "c", "x", "W", "U", "b"],
    )


def lstm_numpy(h, c, xs, W, U, b, reverse=False):
    H = h.shape[1]
    hs, cs = np.empty(xs.shape[:2] + (H,), xs.dtype), np.empty(xs.shape[:2] + (H,), xs.dtype)
    for t in range(len(xs) - 1, -1, -1) if reverse else range(len(xs)):
        z = xs[t] @ W + h @ U + b
        i, f, o = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), sigmoid(z[:, 2 * H : 3 * H])
        g = np.tanh(z[:, 3 * H :])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs[t], cs[t] = h, c
    return h, c, hs, cs


def gru_body(B, D, H, dtype=np.float64):
    """A GRU-like step: r, u gates, candidate from r * h; ys [h']."""

    def step(h, x, W, U, Un):
        zx = x @ W
        r = tn.sigmoid(zx[:, :H] + h @ U[:, :H])
        u = tn.sigmoid(zx[:, H : 2 * H] + h @ U[:, H:])
        n = tn.tanh(zx[:, 2 * H :] + (r * h) @ Un)
        h2 = u * h + (1.0 - u) * n
        return [h2, h2]

    z = np.zeros
    return tn.trace(
        step,
        z((B, H), dtype),
        z((B, D), dtype),
        z((D, 3 * H), dtype),
        z((H, 2 * H), dtype),
        z((H, H), dtype),
        names=["h", "x", "W", "U", "Un"],
    )


def lstm_arrays(rng, T, B, D, H, dtype=np.float64):
    return [
        a.astype(dtype)
        for a in (
            rng.standard_normal((B, H)) * 0.5,
            rng.standard_normal((B, H)) * 0.5,
            rng.standard_normal((T, B, D)),
            rng.standard_normal((D, 4 * H)) / np.sqrt(D),
            rng.standard_normal((H, 4 * H)) / np.sqrt(H),
            rng.standard_normal(4 * H) * 0.1,
        )
    ]


def scanned(body, n_carry, n_xs, reverse=False, outputs="all"):
    """A function of (inits..., xs..., invariants...) scanning `body`: returns the final
    carries and the ys."""

    def fn(*vs):
        r = tn.scan(
            body, vs[:n_carry], vs[n_carry : n_carry + n_xs], vs[n_carry + n_xs :], reverse=reverse
        )
        return r.carries + r.ys

    return fn


def rnn_scan(B, H, T, seed, order="C"):
    """tanh(h W + x_t) over T steps (carry h, ys the step's h), its arrays, and the NumPy
    equations' (final h, ys)."""

    def step(h, x, w):
        return [tn.tanh(h @ w + x), h]

    z = np.zeros((B, H))
    body = tn.trace(step, z, z, np.zeros((H, H)), names=["h", "x", "W"])
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in [(B, H), (T, B, H), (H, H)]]
    arrays = [np.asarray(a, order=order) for a in arrays]
    h, ys = arrays[0], []
    for t in range(T):
        ys.append(h)
        h = np.tanh(h @ arrays[2] + arrays[1][t])
    return tn.trace(scanned(body, 1, 1), *arrays), arrays, (h, np.stack(ys))


def random_body(rng, B=3, D=4, dtype=np.float64):
    """A random step over (h, x, W, U) from the pipeline fuzzer's step ops (0-3 of them after a
    tanh(x W + h U) start, so the carry always depends on h and x): carries [h], ys [h, h*x]."""
    from test_pipeline_random import STEP_OPS

    ops = [int(k) for k in rng.integers(0, len(STEP_OPS), size=int(rng.integers(0, 4)))]

    def step(h, x, w, u):
        h = STEP_OPS[0](h, x, w, u)
        for k in ops:
            h = STEP_OPS[k](h, x, w, u)
        return [h, h, h * x]

    z = np.zeros
    return tn.trace(
        step,
        z((B, D), dtype),
        z((B, D), dtype),
        z((D, D), dtype),
        z((D, D), dtype),
        names=["h", "x", "W", "U"],
    ), ops


def random_arrays(rng, T, B=3, D=4):
    return [
        rng.standard_normal((B, D)),
        rng.standard_normal((T, B, D)),
        rng.standard_normal((D, D)) * 0.5,
        rng.standard_normal((D, D)) * 0.5,
    ]
