"""The extra torch/nn layers against hand-written NumPy equations (forward, grad_input, parameter
gradients at 1e-10), a gradcheck each, float32, and named errors on bad input."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import DTypeError, ShapeError, TapernnError

R = np.random.default_rng(0)
X = (2, 3, 4)


def _narrow(x, g):
    out = np.zeros_like(x)
    out[:, 1:] = g
    return out


def _max_grad(x, g, axis):
    hit = x == x.max(axis, keepdims=True)
    return hit * np.expand_dims(g, axis)


def _positive(m):
    """|x| + 0.5 -> m (Log and Sqrt need positive inputs)."""
    return nn.Sequential().add(nn.Abs()).add(nn.AddConstant(0.5)).add(m)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _euclid(p, x):
    return np.sqrt(((x[..., :, None] - p["weight"]) ** 2).sum(-2))


def _euclid_grads(p, x, g):
    y = _euclid(p, x)
    diff = x[..., :, None] - p["weight"]  # (..., in, out)
    s = (g / y)[..., None, :] * diff
    return s.sum(-1), {"weight": -s.reshape(-1, *p["weight"].shape).sum(0)}


def _hardtanh_grad(x, g, lo=-0.5, hi=0.5):
    return g * ((x > lo) & (x < hi))


# name: (module factory, input shape, forward(p, x), backward(p, x, g) -> (grad_input, {param: grad}))
CASES = {
    "Add": (
        lambda: nn.Add(4),
        X,
        lambda p, x: x + p["bias"],
        lambda p, x, g: (g, {"bias": g.sum((0, 1))}),
    ),
    "Add-scalar": (
        lambda: nn.Add(4, scalar=True),
        X,
        lambda p, x: x + p["bias"],
        lambda p, x, g: (g, {"bias": np.array([g.sum()])}),
    ),
    "Mul": (
        lambda: nn.Mul(),
        X,
        lambda p, x: x * p["weight"],
        lambda p, x, g: (g * p["weight"], {"weight": np.array([(g * x).sum()])}),
    ),
    "CMul": (
        lambda: nn.CMul(3, 4),
        X,
        lambda p, x: x * p["weight"],
        lambda p, x, g: (g * p["weight"], {"weight": (g * x).sum(0)}),
    ),
    "Copy": (lambda: nn.Copy(), X, lambda p, x: x, lambda p, x, g: (g, {})),
    "Narrow": (
        lambda: nn.Narrow(1, 1, -1),
        X,
        lambda p, x: x[:, 1:],
        lambda p, x, g: (_narrow(x, g), {}),
    ),
    "View": (
        lambda: nn.View(2, -1).set_num_input_dims(2),
        X,
        lambda p, x: x.reshape(2, 2, 6),
        lambda p, x, g: (g.reshape(x.shape), {}),
    ),
    "Transpose": (
        lambda: nn.Transpose((0, 1), (1, 2)),
        X,
        lambda p, x: x.transpose(1, 2, 0),
        lambda p, x, g: (g.transpose(2, 0, 1), {}),
    ),
    "Euclidean": (lambda: nn.Euclidean(4, 5), X, _euclid, _euclid_grads),
    "Sum": (
        lambda: nn.Sum(1),
        X,
        lambda p, x: x.sum(1),
        lambda p, x, g: (np.broadcast_to(g[:, None], x.shape), {}),
    ),
    "Sum-average": (
        lambda: nn.Sum(0, 2, size_average=True),
        X,
        lambda p, x: x.mean(1),
        lambda p, x, g: (np.broadcast_to(g[:, None] / 3, x.shape), {}),
    ),
    "Mean": (
        lambda: nn.Mean(-1),
        X,
        lambda p, x: x.mean(-1),
        lambda p, x, g: (np.broadcast_to(g[..., None] / 4, x.shape), {}),
    ),
    "Max": (lambda: nn.Max(1), X, lambda p, x: x.max(1), lambda p, x, g: (_max_grad(x, g, 1), {})),
    "Abs": (lambda: nn.Abs(), X, lambda p, x: np.abs(x), lambda p, x, g: (g * np.sign(x), {})),
    "HardTanh": (
        lambda: nn.HardTanh(-0.5, 0.5),
        X,
        lambda p, x: np.clip(x, -0.5, 0.5),
        lambda p, x, g: (_hardtanh_grad(x, g), {}),
    ),
    "ELU": (
        lambda: nn.ELU(0.7),
        X,
        lambda p, x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1)),
        lambda p, x, g: (g * np.where(x > 0, 1, 0.7 * np.exp(x)), {}),
    ),
    "SoftSign": (
        lambda: nn.SoftSign(),
        X,
        lambda p, x: x / (1 + np.abs(x)),
        lambda p, x, g: (g / (1 + np.abs(x)) ** 2, {}),
    ),
    "LinearNoBias": (
        lambda: nn.LinearNoBias(4, 3),
        X,
        lambda p, x: x @ p["weight"].T,
        lambda p, x, g: (g @ p["weight"], {"weight": g.reshape(-1, 3).T @ x.reshape(-1, 4)}),
    ),
    "ZeroGrad": (lambda: nn.ZeroGrad(), X, lambda p, x: x, lambda p, x, g: (0 * g, {})),
    "CopyGrad": (lambda: nn.CopyGrad(), X, lambda p, x: x, lambda p, x, g: (g, {})),
    "SAdd": (lambda: nn.SAdd(-1, negate=True), X, lambda p, x: 1 - x, lambda p, x, g: (-g, {})),
    "AddConstant": (lambda: nn.AddConstant(2.5), X, lambda p, x: x + 2.5, lambda p, x, g: (g, {})),
    "MulConstant": (
        lambda: nn.MulConstant(-3),
        X,
        lambda p, x: -3 * x,
        lambda p, x, g: (-3 * g, {}),
    ),
    "Power": (lambda: nn.Power(3), X, lambda p, x: x**3, lambda p, x, g: (3 * x**2 * g, {})),
    "Exp": (lambda: nn.Exp(), X, lambda p, x: np.exp(x), lambda p, x, g: (g * np.exp(x), {})),
    "Log": (
        lambda: _positive(nn.Log()),
        X,
        lambda p, x: np.log(np.abs(x) + 0.5),
        lambda p, x, g: (g * np.sign(x) / (np.abs(x) + 0.5), {}),
    ),
    "Sqrt": (
        lambda: _positive(nn.Sqrt()),
        X,
        lambda p, x: np.sqrt(np.abs(x) + 0.5),
        lambda p, x, g: (g * np.sign(x) * 0.5 / np.sqrt(np.abs(x) + 0.5), {}),
    ),
    "Square": (lambda: nn.Square(), X, lambda p, x: x * x, lambda p, x, g: (2 * x * g, {})),
    "LogSigmoid": (
        lambda: nn.LogSigmoid(),
        X,
        lambda p, x: -np.log1p(np.exp(-x)),
        lambda p, x, g: (g / (1 + np.exp(x)), {}),
    ),
    "SoftMin": (
        lambda: nn.SoftMin(),
        X,
        lambda p, x: _softmax(-x),
        lambda p, x, g: (-_softmax(-x) * (g - (g * _softmax(-x)).sum(-1, keepdims=True)), {}),
    ),
    "SoftPlus": (
        lambda: nn.SoftPlus(2.0, threshold=1.0),
        X,
        lambda p, x: np.where(2 * x > 1, x, np.log1p(np.exp(2 * x)) / 2),
        lambda p, x, g: (g * np.where(2 * x > 1, 1, 1 / (1 + np.exp(-2 * x))), {}),
    ),
    "LeakyReLU": (
        lambda: nn.LeakyReLU(0.1),
        X,
        lambda p, x: np.where(x > 0, x, 0.1 * x),
        lambda p, x, g: (g * np.where(x > 0, 1, 0.1), {}),
    ),
    "Clamp": (
        lambda: nn.Clamp(-0.5, 0.5),
        X,
        lambda p, x: np.clip(x, -0.5, 0.5),
        lambda p, x, g: (_hardtanh_grad(x, g), {}),
    ),
    "Min": (
        lambda: nn.Min(0, 2),
        X,
        lambda p, x: x.min(1),
        lambda p, x, g: (_max_grad(-x, g, 1), {}),
    ),
    "Select": (
        lambda: nn.Select(1, -1),
        X,
        lambda p, x: x[:, -1],
        lambda p, x, g: (np.concatenate([np.zeros((2, 2, 4)), g[:, None]], 1), {}),
    ),
    "Squeeze": (
        lambda: nn.Squeeze(),
        (2, 1, 4),
        lambda p, x: x[:, 0],
        lambda p, x, g: (g[:, None], {}),
    ),
    "Unsqueeze": (
        lambda: nn.Unsqueeze(0, 2),
        X,
        lambda p, x: x[:, None],
        lambda p, x, g: (g[:, 0], {}),
    ),
    "Replicate": (
        lambda: nn.Replicate(3, 1),
        X,
        lambda p, x: np.repeat(x[:, None], 3, 1),
        lambda p, x, g: (g.sum(1), {}),
    ),
    "Padding-left": (
        lambda: nn.Padding(0, -2, 2, value=0.5),
        X,
        lambda p, x: np.concatenate([np.full((2, 2, 4), 0.5), x], 1),
        lambda p, x, g: (g[:, 2:], {}),
    ),
    "Padding-inside": (
        lambda: nn.Padding(-1, 1, index=1),
        X,
        lambda p, x: np.concatenate([x[..., :3], np.zeros((2, 3, 1)), x[..., 3:]], -1),
        lambda p, x, g: (np.delete(g, 3, -1), {}),
    ),
}


def params_of(m):
    return {k: p.data.copy() for k, p in m.named_parameters().items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_matches_numpy_equations(name):
    make, shape, fwd, bwd = CASES[name]
    tn.manual_seed(1)
    m = make()
    x, seed = R.standard_normal(shape), None
    p = params_of(m)
    y = m.forward(x)
    np.testing.assert_allclose(y, fwd(p, x), rtol=1e-12, atol=1e-14)
    seed = R.standard_normal(y.shape)
    m.zero_grad_parameters()
    gin = m.backward(x, seed)
    exp_gin, exp_params = bwd(p, x, seed)
    np.testing.assert_allclose(gin, exp_gin, rtol=1e-10, atol=1e-12)
    assert set(exp_params) == set(m.named_parameters())
    for k, q in m.named_parameters().items():
        np.testing.assert_allclose(q.grad, exp_params[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", sorted(set(CASES) - {"ZeroGrad"}))
def test_layer_gradcheck(name):
    make, shape, _, _ = CASES[name]
    tn.manual_seed(2)
    m = make()
    x = R.standard_normal(shape)
    crit = nn.MSECriterion()
    target = R.standard_normal(m.forward(x).shape)
    assert tn.testing.gradcheck_module(m, crit, x, target)


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_runs_in_float32(name):
    make, shape, fwd, _ = CASES[name]
    tn.manual_seed(3)
    m = make().astype(np.float32)
    x = R.standard_normal(shape).astype(np.float32)
    y = m.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, fwd(params_of(m), x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert m.backward(x, np.ones_like(y)).dtype == np.float32


def test_copy_converts_dtype_both_ways():
    x = R.standard_normal(X)
    m = nn.Copy(np.float32)
    assert m.forward(x).dtype == np.float32
    assert m.backward(x, np.ones(X, np.float32)).dtype == np.float64
    with pytest.raises(DTypeError, match="float dtype"):
        nn.Copy(np.int32)


@pytest.mark.parametrize(
    "module,bad,match",
    [
        (nn.Add(5), np.zeros((2, 4)), "size 5"),
        (nn.CMul(3, 4), np.zeros((2, 4, 3)), r"ending in shape \(3, 4\)"),
        (nn.Narrow(1, 2, 3), np.zeros((2, 4)), "out of range"),
        (nn.Narrow(3, 0), np.zeros((2, 4)), "dimension 3"),
        (nn.View(5), np.zeros((2, 4)), "cannot view"),
        (nn.Transpose((0, 3)), np.zeros((2, 4)), "cannot swap"),
        (nn.Euclidean(3, 2), np.zeros((2, 4)), "size 3"),
        (nn.Sum(2), np.zeros((2, 4)), "out of range"),
        (nn.Max(-3), np.zeros((2, 4)), "out of range"),
        (nn.Abs(), [np.zeros(2)], "got a list"),
        (nn.Padding(0, 2, index=3), np.zeros((2, 4)), "index 3 out of range"),
        (nn.Select(1, 4), np.zeros((2, 4)), "index 4 out of range"),
        (nn.Unsqueeze(3), np.zeros((2, 4)), "position 3 out of range"),
        (nn.Min(2), np.zeros((2, 4)), "out of range"),
    ],
)
def test_bad_input_names_the_module(module, bad, match):
    with pytest.raises(ShapeError, match=match) as info:
        module.forward(bad)
    assert module.describe() in str(info.value)
    assert isinstance(info.value, TapernnError)


def test_torch7_constructor_rules():
    x = R.standard_normal((2, 3, 4))
    np.testing.assert_array_equal(nn.Narrow(-1, -2, 2).forward(x), x[..., 2:])
    np.testing.assert_array_equal(nn.Narrow(2, 1, -2).forward(x), x[..., 1:3])
    np.testing.assert_array_equal(nn.View(12).forward(x), x.reshape(2, 12))  # batch kept
    np.testing.assert_array_equal(nn.View(6, 4).forward(x), x.reshape(6, 4))
    np.testing.assert_array_equal(nn.Sum(0, 2).forward(x), x.sum(1))  # batch dim skipped
    np.testing.assert_array_equal(nn.Sum(0, 3).forward(x), x.sum(0))
    assert nn.Mul().weight.shape == (1,) and np.abs(nn.CMul(4).weight.data).max() <= 0.5


def test_expand_as():
    a, b = R.standard_normal((2, 3, 4)), R.standard_normal((2, 1, 4))
    m = nn.ExpandAs()
    out = m.forward([a, b])
    np.testing.assert_array_equal(out[1], np.broadcast_to(b, a.shape))
    ga, gb = R.standard_normal(a.shape), R.standard_normal(a.shape)
    gin = m.backward([a, b], [ga, gb])
    np.testing.assert_allclose(gin[0], ga, rtol=1e-14)
    np.testing.assert_allclose(gin[1], gb.sum(1, keepdims=True), rtol=1e-12)
    out32 = m.astype(np.float32).forward([a.astype(np.float32), b.astype(np.float32)])
    assert out32[1].dtype == np.float32
    with pytest.raises(ShapeError, match="cannot expand"):
        nn.ExpandAs().forward([a, np.zeros((2, 2, 4))])


@pytest.mark.parametrize(
    "module,fn",
    [
        (nn.CSubTable(), lambda a, b: (a - b, 1, -1)),
        (nn.CDivTable(), lambda a, b: (a / b, 1 / b, -a / b**2)),
        (nn.CMaxTable(), lambda a, b: (np.maximum(a, b), a > b, b > a)),
        (nn.CMinTable(), lambda a, b: (np.minimum(a, b), a < b, b < a)),
    ],
)
def test_table_arithmetic(module, fn):
    a, b = R.standard_normal(X), R.standard_normal(X) + 3
    g = R.standard_normal(X)
    y, da, db = fn(a, b)
    np.testing.assert_allclose(module.forward([a, b]), y, rtol=1e-13)
    ga, gb = module.backward([a, b], g)
    np.testing.assert_allclose(ga, g * da, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gb, g * db, rtol=1e-12, atol=1e-15)
    with pytest.raises(ShapeError, match="entries have shapes"):
        module.forward([a, b[0]])


def test_map_table_shares_its_module():
    tn.manual_seed(7)
    lin = nn.Linear(4, 2)
    m = nn.MapTable(lin)
    xs = [R.standard_normal((3, 4)) for _ in range(3)]
    ys = m.forward(xs)
    for x, y in zip(xs, ys):
        np.testing.assert_allclose(y, x @ lin.weight.data.T + lin.bias.data, rtol=1e-13)
    m.zero_grad_parameters()
    gs = [R.standard_normal((3, 2)) for _ in range(3)]
    m.backward(xs, gs)
    np.testing.assert_allclose(lin.weight.grad, sum(g.T @ x for g, x in zip(gs, xs)), rtol=1e-12)
    assert list(m.named_parameters()) == ["0.weight", "0.bias"]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: nn.View(2, -1, -1), "at most one -1"),
        (lambda: nn.View(0), "sizes must be positive"),
        (lambda: nn.Narrow(0, 0, 0), "length must be a non-zero"),
        (lambda: nn.Padding(0, 0), "pad must be a non-zero"),
        (lambda: nn.CMul(), "weight's shape"),
        (lambda: nn.CMul(3, 0), r"size\[1\]"),
        (lambda: nn.Transpose(0), "pair of dims"),
        (lambda: nn.HardTanh(1, -1), "must be < max_value"),
        (lambda: nn.SoftPlus(0), "beta must be a positive"),
        (lambda: nn.ELU("1"), "alpha must be"),
    ],
)
def test_constructor_arguments_are_checked(make, match):
    with pytest.raises(tn.errors.ArgumentError, match=match):
        make()
