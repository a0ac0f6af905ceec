"""Hand-written NumPy equations of the built-in cells (the Element-Research math), written so
they run on complex arrays too: complex-step differentiation then gives exact gradients."""

import numpy as np


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def lstm_step(p, x, h, c, peephole=True):
    def pre(g):
        return x @ p[f"w_x{g}"].T + p[f"b_{g}"] + h @ p[f"w_h{g}"].T

    i_pre, f_pre = pre("i"), pre("f")
    if peephole:
        i_pre, f_pre = i_pre + p["p_i"] * c, f_pre + p["p_f"] * c
    i, f, g = sigmoid(i_pre), sigmoid(f_pre), np.tanh(pre("g"))
    c2 = f * c + i * g
    o = sigmoid(pre("o") + (p["p_o"] * c2 if peephole else 0))
    return o * np.tanh(c2), c2


def fastlstm_step(p, x, h, c):
    a = x @ p["i2g.weight"].T + p["i2g.bias"] + h @ p["o2g.weight"].T
    i, g, f, o = np.split(a, 4, axis=-1)
    c2 = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c2), c2


def gru_step(p, x, h, reset_after=False):
    r = sigmoid(x @ p["w_xr"].T + p["b_r"] + h @ p["w_hr"].T)
    z = sigmoid(x @ p["w_xz"].T + p["b_z"] + h @ p["w_hz"].T)
    if reset_after:
        n = np.tanh(x @ p["w_xn"].T + p["b_n"] + r * (h @ p["w_hn"].T + p["b_hn"]))
    else:
        n = np.tanh(x @ p["w_xn"].T + p["b_n"] + (r * h) @ p["w_hn"].T)
    return ((1 - z) * n + z * h,)


def rnn_step(p, x, h, nonlinearity="tanh"):
    a = x @ p["w_xh"].T + p["b_h"] + h @ p["w_hh"].T
    f = {"tanh": np.tanh, "sigmoid": sigmoid, "relu": lambda v: np.where(v.real > 0, v, 0)}
    return (f[nonlinearity](a),)


def run(step, params, xs, n_states, hidden):
    """Unroll `step` over xs (T, [B,] D) from zero states; returns (T, [B,] H) outputs, states."""
    dtype = np.result_type(xs, *params.values())
    state = tuple(np.zeros(xs.shape[1:-1] + (hidden,), dtype) for _ in range(n_states))
    outs, states = [], []
    for x in xs:
        state = step(params, x, *state)
        outs.append(state[0])
        states.append(state)
    return np.stack(outs), states


def complex_step_grads(step, params, xs, n_states, hidden, seed_out):
    """d sum(seed_out * outputs) / d(every param entry and every input entry), exact to ~1e-15."""
    h = 1e-30
    grads = {}
    for name, value in list(params.items()) + [("input", xs)]:
        g = np.zeros(value.shape)
        for idx in np.ndindex(value.shape):
            pert = value.astype(complex)
            pert[idx] += 1j * h
            p2 = dict(params)
            x2 = xs
            if name == "input":
                x2 = pert
            else:
                p2[name] = pert
            out, _ = run(step, p2, x2, n_states, hidden)
            g[idx] = np.sum(seed_out * out).imag / h
        grads[name] = g
    return grads


def complex_step_state_grads(step, params, xs, seed_out, t, hidden, n_states=2):
    """d sum(seed_out[s] * outputs[s] for s > t) / d(each of step t's states): the gradient step
    t + 1 sends back into step t's states (get_grad_hidden_state(t)), by complex step."""
    _, states = run(step, params, xs, n_states, hidden)
    out = []
    for k in range(n_states):
        grad = np.zeros((xs.shape[1], hidden))
        for idx in np.ndindex(grad.shape):
            state = [s.astype(complex) for s in states[t]]
            state[k][idx] += 1e-30j
            total = 0
            for s in range(t + 1, len(xs)):
                state = step(params, xs[s], *state)
                total = total + np.sum(seed_out[s] * state[0])
            grad[idx] = total.imag / 1e-30
        out.append(grad)
    return out
