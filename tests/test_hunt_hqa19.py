"""hqa19: custom cells as their authors write them -- none the other tests have (a coupled-gate
LSTM whose o peeks at the old cell, an Elman RNN with a layer norm and an output() of its own,
a GRU whose reset gates the input) -- against their NumPy equations (complex-step gradients) in a
Sequencer, stacked with mask_zero(), remembered across chunks and stepped by a Recursor; and a
parameter registered in step, which said only 'already registered'."""

import numpy as np
import pytest
from cell_reference import sigmoid

import tapernn as tn
from tapernn import nn


class PeepCIFG(nn.Cell):
    state_names = ("h", "c")

    def __init__(self, d, h):
        super().__init__(d, h)
        self.w = self.parameter("w", (d + h, 3 * h))
        self.b = self.parameter("b", (3 * h,))
        self.p_f = self.parameter("p_f", (h,))
        self.p_o = self.parameter("p_o", (h,))

    def step(self, x, h, c):
        H = self.hidden_size
        a = tn.concat([x, h], axis=-1) @ self.w + self.b
        f = tn.sigmoid(a[..., :H] + self.p_f * c)
        o = tn.sigmoid(a[..., 2 * H :] + self.p_o * c)  # (the old c)
        c2 = f * c + (1 - f) * tn.tanh(a[..., H : 2 * H])
        return o * tn.tanh(c2), c2


def np_peep(p, x, h, c):
    H = h.shape[-1]
    a = np.concatenate([x, h], axis=-1) @ p["w"] + p["b"]
    f = sigmoid(a[..., :H] + p["p_f"] * c)
    o = sigmoid(a[..., 2 * H :] + p["p_o"] * c)
    c2 = f * c + (1 - f) * np.tanh(a[..., H : 2 * H])
    return (o * np.tanh(c2), c2), None


class LNRNN(nn.Cell):
    state_names = ("h",)

    def __init__(self, d, h):
        super().__init__(d, h)
        self.w_x = self.parameter("w_x", (d, h))
        self.w_h = self.parameter("w_h", (h, h))
        self.gain = self.parameter("gain", (h,), init="ones")
        self.bias = self.parameter("bias", (h,), init="normal")

    def step(self, x, h):
        a = x @ self.w_x + h @ self.w_h
        mu = tn.mean(a, axis=-1, keepdims=True)
        var = tn.mean((a - mu) ** 2, axis=-1, keepdims=True)
        return tn.tanh(self.gain * (a - mu) / tn.sqrt(var + 1e-5) + self.bias)

    def output(self, h):
        return h * tn.sigmoid(h)


def np_ln(p, x, h):
    a = x @ p["w_x"] + h @ p["w_h"]
    mu = a.mean(-1, keepdims=True)
    var = ((a - mu) ** 2).mean(-1, keepdims=True)
    h2 = np.tanh(p["gain"] * (a - mu) / np.sqrt(var + 1e-5) + p["bias"])
    return (h2,), h2 * sigmoid(h2)


class InGRU(nn.Cell):
    state_names = ("h",)

    def __init__(self, d, h):
        super().__init__(d, h)
        self.w_r = self.parameter("w_r", (d + h, d))
        self.w_z = self.parameter("w_z", (d + h, h))
        self.w_n = self.parameter("w_n", (d, h))
        self.u_n = self.parameter("u_n", (h, h))
        self.b_n = self.parameter("b_n", (h,))

    def step(self, x, h):
        xh = tn.concat([x, h], axis=-1)
        r, z = tn.sigmoid(xh @ self.w_r), tn.sigmoid(xh @ self.w_z)
        return z * h + (1 - z) * tn.tanh((r * x) @ self.w_n + h @ self.u_n + self.b_n)


def np_in(p, x, h):
    xh = np.concatenate([x, h], axis=-1)
    r, z = sigmoid(xh @ p["w_r"]), sigmoid(xh @ p["w_z"])
    return (z * h + (1 - z) * np.tanh((r * x) @ p["w_n"] + h @ p["u_n"] + p["b_n"]),), None


EQUATIONS = {PeepCIFG: np_peep, LNRNN: np_ln, InGRU: np_in}
T, B, D, H = 4, 3, 3, 4


def np_run(cells, params, xs, init=None):
    """The stacked cells' outputs over xs (T, B, D) and their final states; a mask_zero() cell
    outputs zeros and resets the state of rows whose input is all zeros."""
    finals = []
    for k, (prefix, cell) in enumerate(cells):
        p = {n[len(prefix) :]: v for n, v in params.items() if n.startswith(prefix)}
        state = init[k] if init else [np.zeros((B, H))] * len(cell.state_names)
        outs = []
        for x in xs:
            state, out = EQUATIONS[type(cell)](p, x, *state)
            out = state[0] if out is None else out
            if cell._mask_zero:
                keep = np.abs(x.real).max(-1, keepdims=True) != 0
                state, out = [np.where(keep, s, 0) for s in state], np.where(keep, out, 0)
            outs.append(out)
        xs = np.stack(outs)
        finals.append(state)
    return xs, finals


def complex_step(cells, params, xs, seed, init=None):
    """d sum(seed * outputs) / d(each parameter and input entry), exact to ~1e-15."""
    grads = {}
    for name, value in [*params.items(), ("input", xs)]:
        g = np.zeros(value.shape)
        for idx in np.ndindex(value.shape):
            pert = value.astype(complex)
            pert[idx] += 1e-30j
            p2 = {**params, name: pert} if name != "input" else params
            out, _ = np_run(cells, p2, pert if name == "input" else xs, init)
            g[idx] = np.sum(seed * out).imag / 1e-30
        grads[name] = g
    return grads


def _check(model, cells, x, seed, init=None, calls=3):
    params = {n: p.data.copy() for n, p in model.named_parameters().items()}
    want, finals = np_run(cells, params, x, init)
    grads = complex_step(cells, params, x, seed, init)
    for _ in range(calls):  # (the numba backend runs its kernels from the second call)
        model.zero_grad_parameters()
        np.testing.assert_allclose(model.forward(x), want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(model.backward(x, seed), grads["input"], rtol=0, atol=1e-11)
        for name, p in model.named_parameters().items():
            np.testing.assert_allclose(p.grad, grads[name], rtol=0, atol=1e-11, err_msg=name)
    return finals


@pytest.mark.parametrize("cls", [PeepCIFG, LNRNN, InGRU])
def test_custom_cells_stacked_masked_and_remembered_match_their_equations(cls):
    rng = np.random.default_rng(19)
    tn.manual_seed(19)
    lower, upper = cls(D, H).mask_zero(), cls(H, H)
    model = nn.Sequencer(nn.Sequential().add(lower).add(upper))
    cells = [("0.0.", lower), ("0.1.", upper)]
    x, x2 = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, D))
    x[0, 1] = x[2:, 0] = x2[1, 2] = 0  # (rows the lower layer resets)
    seed = rng.standard_normal((T, B, H))
    finals = _check(model, cells, x, seed)
    model.remember("both")
    for _ in range(3):  # chunk 2 starts from chunk 1's final states (gradients stop there)
        model.forget()
        model.forward(x)
        _check(model, cells, x2, seed, init=finals, calls=1)


@pytest.mark.parametrize("cls", [PeepCIFG, LNRNN, InGRU])
def test_custom_cells_stepped_by_a_recursor_match_their_equations(cls):
    rng = np.random.default_rng(20)
    tn.manual_seed(20)
    cell = cls(D, H)
    x, seed = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    params = {n: p.data.copy() for n, p in cell.named_parameters().items()}
    want, _ = np_run([("", cell)], params, x)
    grads = complex_step([("", cell)], params, x, seed)
    rec = nn.Recursor(cell)
    outs = [rec.forward(xt) for xt in x]
    dxs = [rec.backward(x[t], seed[t]) for t in reversed(range(T))][::-1]
    np.testing.assert_allclose(np.stack(outs), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.stack(dxs), grads["input"], rtol=0, atol=1e-11)
    for name, p in cell.named_parameters().items():
        np.testing.assert_allclose(p.grad, grads[name], rtol=0, atol=1e-11, err_msg=name)


def test_a_parameter_registered_in_step_says_where_it_goes():
    """A custom cell calling self.parameter() in step: its second step registered the name
    again; main said only 'already registered'."""

    class Cell(nn.Cell):
        def __init__(self):
            super().__init__(3, 4)
            self.w = self.parameter("w", (3, 4))

        def step(self, x, h):
            return tn.tanh(x @ self.w + h * self.parameter("v", (4,)))

    with pytest.raises(tn.ArgumentError, match=r"'v' is already registered \(register each pa"):
        nn.Sequencer(Cell()).forward(np.ones((2, 1, 3)))


def test_a_cell_step_under_gradcheck_says_how_to_pass_its_parameters():
    """tn.gradcheck of a cell's step (its parameters read outside a module's forward): main said
    'symbolic module calls only happen inside a traced forward', a bare TapernnError."""
    cell = InGRU(D, H)
    rng = np.random.default_rng(0)
    with pytest.raises(tn.TracingError, match=r"parameter 'w_r' is read outside .*\.data there"):
        tn.gradcheck(cell.step, rng.standard_normal((B, D)), rng.standard_normal((B, H)))
