"""Differential test of the stateful API: random chunkings of one sequence, stepped by hand,
through a Recursor and through Sequencer(remember='both') (update after every chunk), against a
plain NumPy truncated-BPTT written here (forward and hand-derived backward of RNN and LSTM)."""

from __future__ import annotations

import numpy as np
import pytest
from cell_reference import lstm_step, rnn_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapernn import nn

D, H, B, T_MAX, LR = 3, 4, 2, 27, 0.1
RNG = np.random.default_rng(7)
XS = RNG.standard_normal((T_MAX, B, D))
GS = RNG.standard_normal((T_MAX, B, H))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


# ---- NumPy: one step forward (keeping what backward needs) and its hand-derived backward ----


def rnn_forward(p, x, state):
    (h,) = state
    h2 = np.tanh(x @ p["w_xh"].T + p["b_h"] + h @ p["w_hh"].T)
    return (h2,), (x, h, h2)


def rnn_backward(p, cache, d_state, grads):
    x, h, h2 = cache
    da = d_state[0] * (1 - h2**2)
    grads["w_xh"] += da.T @ x
    grads["w_hh"] += da.T @ h
    grads["b_h"] += da.sum(0)
    return da @ p["w_xh"], (da @ p["w_hh"],)


def lstm_forward(p, x, state):
    h, c = state

    def pre(g):
        return x @ p[f"w_x{g}"].T + p[f"b_{g}"] + h @ p[f"w_h{g}"].T

    i = sigmoid(pre("i") + p["p_i"] * c)
    f = sigmoid(pre("f") + p["p_f"] * c)
    g = np.tanh(pre("g"))
    c2 = f * c + i * g
    o = sigmoid(pre("o") + p["p_o"] * c2)
    tc2 = np.tanh(c2)
    return (o * tc2, c2), (x, h, c, i, f, g, o, c2, tc2)


def lstm_backward(p, cache, d_state, grads):
    x, h, c, i, f, g, o, c2, tc2 = cache
    dh2, dc2 = d_state
    da = {"o": dh2 * tc2 * o * (1 - o)}
    dc2 = dc2 + dh2 * o * (1 - tc2**2) + da["o"] * p["p_o"]
    da["i"] = dc2 * g * i * (1 - i)
    da["f"] = dc2 * c * f * (1 - f)
    da["g"] = dc2 * i * (1 - g**2)
    dc = dc2 * f + da["i"] * p["p_i"] + da["f"] * p["p_f"]
    grads["p_o"] += (da["o"] * c2).sum(0)
    grads["p_i"] += (da["i"] * c).sum(0)
    grads["p_f"] += (da["f"] * c).sum(0)
    dx, dh = 0, 0
    for gate, d in da.items():
        grads[f"w_x{gate}"] += d.T @ x
        grads[f"w_h{gate}"] += d.T @ h
        grads[f"b_{gate}"] += d.sum(0)
        dx, dh = dx + d @ p[f"w_x{gate}"], dh + d @ p[f"w_h{gate}"]
    return dx, (dh, dc)


CELLS = {
    "RNN": (lambda: nn.RNN(D, H), rnn_forward, rnn_backward, 1),
    "LSTM": (lambda: nn.LSTM(D, H), lstm_forward, lstm_backward, 2),
}


def numpy_truncated_bptt(kind, params, chunks):
    """Per chunk: forward from the state the last chunk ended in; backward its steps in reverse,
    the newest starting from zero gradient from later steps, nothing flowing past the chunk's
    first step; then params -= LR * grads. Returns outputs, grad inputs, per-chunk grads."""
    _, forward, backward, n_states = CELLS[kind]
    p = {k: v.copy() for k, v in params.items()}
    state = tuple(np.zeros((B, H)) for _ in range(n_states))
    outs, gins, pgrads, start = [], [None] * sum(chunks), [], 0
    for n in chunks:
        caches = []
        for t in range(start, start + n):
            state, cache = forward(p, XS[t], state)
            outs.append(state[0])
            caches.append(cache)
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        d_state = tuple(np.zeros((B, H)) for _ in range(n_states))
        for t in reversed(range(start, start + n)):
            d_in = (d_state[0] + GS[t],) + d_state[1:]
            gins[t], d_state = backward(p, caches[t - start], d_in, grads)
        pgrads.append(grads)
        p = {k: p[k] - LR * grads[k] for k in p}
        start += n
    return outs, gins, pgrads


# ---- tapernn, three ways; modules are made once and reset per example (compiles are cached) --

_RUNNERS: dict = {}


def runner(kind, how):
    if (kind, how) not in _RUNNERS:
        cell = CELLS[kind][0]()
        outer = {
            "hand": cell,
            "recursor": nn.Recursor(cell),
            "sequencer": nn.Sequencer(cell).remember("both"),
        }[how]
        _RUNNERS[kind, how] = (cell, outer)
    return _RUNNERS[kind, how]


def run_tapernn(kind, how, params, chunks, rho):
    cell, outer = runner(kind, how)
    cell.load_state_dict(params)
    outer.forget()
    outer.max_bptt_step(None)
    outs, gins, pgrads, start = [], [None] * sum(chunks), [], 0
    for n in chunks:
        outer.zero_grad_parameters()
        steps = range(start, start + n)
        if how == "sequencer":
            outs += list(np.array(outer.forward(XS[start : start + n])))
            gins[start : start + n] = list(
                np.array(outer.backward(XS[start : start + n], GS[start : start + n]))
            )
        else:
            if rho:
                outer.max_bptt_step(n)
            outs += [np.array(outer.forward(XS[t])) for t in steps]
            for t in reversed(steps):
                gins[t] = np.array(outer.backward(XS[t], GS[t]))
        pgrads.append({k: q.grad.copy() for k, q in cell.named_parameters().items()})
        outer.update_parameters(LR)
        start += n
    return outs, gins, pgrads


def initial_params(kind):
    rng = np.random.default_rng(11)
    return {
        k: rng.uniform(-0.6, 0.6, q.shape) for k, q in CELLS[kind][0]().named_parameters().items()
    }


def test_numpy_forward_matches_the_reference_cell_equations():
    for kind, ref_step in (("RNN", rnn_step), ("LSTM", lstm_step)):
        p = initial_params(kind)
        state = tuple(np.zeros((B, H)) for _ in range(CELLS[kind][3]))
        for x in XS[:3]:
            want = ref_step(p, x, *state)
            state, _ = CELLS[kind][1](p, x, state)
            for a, b in zip(state, want):
                np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-15)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    kind=st.sampled_from(sorted(CELLS)),
    how=st.sampled_from(["hand", "recursor", "sequencer"]),
    chunks=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    rho=st.booleans(),
)
def test_random_chunkings_agree_with_numpy_truncated_bptt(kind, how, chunks, rho):
    params = initial_params(kind)
    want = numpy_truncated_bptt(kind, params, chunks)
    got = run_tapernn(kind, how, params, chunks, rho)
    for t, (a, b) in enumerate(zip(got[0], want[0], strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"output {t}")
    for t, (a, b) in enumerate(zip(got[1], want[1], strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"grad input {t}")
    for c, (a, b) in enumerate(zip(got[2], want[2], strict=True)):
        for k in b:
            np.testing.assert_allclose(
                a[k], b[k], rtol=1e-12, atol=1e-12, err_msg=f"chunk {c} grad {k}"
            )


@pytest.mark.parametrize("how", ["hand", "recursor", "sequencer"])
def test_the_chunking_of_the_issue_agrees_with_numpy(how):
    test_random_chunkings_agree_with_numpy_truncated_bptt.hypothesis.inner_test(
        kind="LSTM", how=how, chunks=[5, 4, 5, 3, 7, 3], rho=how != "sequencer"
    )
