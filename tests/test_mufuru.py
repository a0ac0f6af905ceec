"""MuFuRu against hand-written NumPy equations (complex-step gradients, 1e-10), batched and
unbatched, op subsets, gradcheck, float32 and errors."""

import numpy as np
import pytest
from cell_reference import complex_step_grads, run, sigmoid

import tapernn as tn
from tapernn import nn

T, D, H = 4, 3, 4


def _max(a, b):  # selection by the real part: exact under complex-step differentiation
    return np.where(a.real > b.real, a, b)


def _min(a, b):
    return np.where(a.real < b.real, a, b)


NUMPY_OPS = {
    "keep": lambda s, v: s,
    "replace": lambda s, v: v,
    "mul": lambda s, v: s * v,
    "diff": lambda s, v: s - v,
    "forget": lambda s, v: 0 * s,
    "sqrt_diff": lambda s, v: 0.25 * ((s - v) ** 2) ** 0.25,  # ¼√|s−v|, analytic off s = v
    "max": _max,
    "min": _min,
}


def mufuru_step(ops):
    def step(p, x, s):
        def lin(name, v):
            return v @ p[f"{name}.weight"].T + p[f"{name}.bias"]

        r = sigmoid(lin("reset_x", x) + lin("reset_h", s))
        v = sigmoid(lin("feature", np.concatenate([x, r * s], -1)))
        a = lin("op_weights", np.concatenate([x, s], -1)).reshape(s.shape[:-1] + (len(ops), H))
        e = np.exp(a - a.real.max(-2, keepdims=True))
        prob = e / e.sum(-2, keepdims=True)
        return (sum(prob[..., j, :] * NUMPY_OPS[op](s, v) for j, op in enumerate(ops)),)

    return step


@pytest.mark.parametrize(
    "ops",
    [None, ("keep", "replace"), ("max", "min", "sqrt_diff")],
    ids=["all", "gru-like", "max-min-sqrt"],
)
@pytest.mark.parametrize("batch", [None, 2], ids=["unbatched", "batched"])
def test_mufuru_matches_numpy_equations(ops, batch):
    tn.manual_seed(0)
    cell = nn.MuFuRu(D, H, ops)
    names = cell.ops
    rng = np.random.default_rng(0)
    shape = (T, D) if batch is None else (T, batch, D)
    xs, seed = rng.standard_normal(shape), rng.standard_normal(shape[:-1] + (H,))
    params = {k: p.data.copy() for k, p in cell.named_parameters().items()}
    expected, _ = run(mufuru_step(names), params, xs, 1, H)
    seq = nn.Sequencer(cell)
    np.testing.assert_allclose(seq.forward(xs), expected, rtol=1e-12, atol=1e-14)
    seq.zero_grad_parameters()
    gin = seq.backward(xs, seed)
    exact = complex_step_grads(mufuru_step(names), params, xs, 1, H, seed)
    np.testing.assert_allclose(gin, exact["input"], rtol=1e-10, atol=1e-12)
    for name, p in cell.named_parameters().items():
        np.testing.assert_allclose(p.grad, exact[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_gradcheck_float32_and_errors():
    tn.manual_seed(1)
    seq = nn.Sequencer(nn.MuFuRu(D, H))
    xs = np.random.default_rng(1).standard_normal((T, 2, D))
    target = np.random.default_rng(2).standard_normal((T, 2, H))
    assert tn.testing.gradcheck_module(seq, nn.MSECriterion(), xs, target)
    seq.astype(np.float32)
    y = seq.forward(xs.astype(np.float32))
    assert y.dtype == np.float32
    assert seq.backward(xs.astype(np.float32), np.ones_like(y)).dtype == np.float32
    with pytest.raises(tn.errors.ArgumentError, match="MuFuRu: ops"):
        nn.MuFuRu(D, H, ["keep", "xor"])
    with pytest.raises(tn.errors.ShapeError, match=r"\(batch, 3\)"):
        nn.MuFuRu(D, H).forward(np.zeros((2, D + 1)))
