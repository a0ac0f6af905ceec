"""TrimZero: NumPy equations, equivalence with MaskZero (1e-12, also around recurrent modules
and all-padding batches), real trimming (the module sees only the kept rows), errors."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import ShapeError

B, D, H, T = 5, 3, 4, 4


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, D))
    x[[0, 3]] = 0
    return x, rng


def test_trimzero_linear_matches_numpy_equations():
    tn.manual_seed(0)
    lin = nn.Linear(D, H)
    m = nn.TrimZero(lin, 1)
    x, rng = _batch()
    W, b = lin.weight.data.copy(), lin.bias.data.copy()
    keep = (np.abs(x).sum(1, keepdims=True) > 0).astype(float)
    y = m.forward(x)
    np.testing.assert_allclose(y, (x @ W.T + b) * keep, rtol=1e-13)
    assert lin.output.shape == (B - 2, H)  # the module ran on the three kept rows only
    g = rng.standard_normal((B, H))
    m.zero_grad_parameters()
    gin = m.backward(x, g)
    np.testing.assert_allclose(gin, (g * keep) @ W, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(lin.weight.grad, (g * keep).T @ x, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(lin.bias.grad, (g * keep).sum(0), rtol=1e-10, atol=1e-14)


def _pair(make, n_input_dim=1):
    tn.manual_seed(1)
    a = make()
    b = make()
    b.load_state_dict(a.state_dict())
    return nn.TrimZero(a, n_input_dim), nn.MaskZero(b)


def _run(m, x, g):
    m.zero_grad_parameters()
    return m.forward(x), m.backward(x, g), [p.grad.copy() for p in m.parameters()]


@pytest.mark.parametrize("all_padding", [False, True])
def test_trimzero_equals_maskzero(all_padding):
    trim, mask = _pair(lambda: nn.Sequential().add(nn.Linear(D, H)).add(nn.Tanh()))
    x, rng = _batch(2)
    if all_padding:
        x[:] = 0
    g = rng.standard_normal((B, H))
    (ya, ga, pa), (yb, gb, pb) = _run(trim, x, g), _run(mask, x, g)
    np.testing.assert_allclose(ya, yb, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-15)
    for p, q in zip(pa, pb):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-15)
    assert np.all(ya[[0, 3]] == 0)


def test_trimzero_equals_maskzero_around_a_recurrent_module():
    trim, mask = _pair(lambda: nn.LSTM(D, H))
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((T, B, D))
    xs[:2, 0] = 0
    xs[1, 2] = 0
    gs = rng.standard_normal((T, B, H))
    (ya, ga, pa), (yb, gb, pb) = _run(nn.Sequencer(trim), xs, gs), _run(nn.Sequencer(mask), xs, gs)
    np.testing.assert_allclose(ya, yb, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-15)
    for p, q in zip(pa, pb):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-15)


def test_unbatched_and_table_inputs():
    m = nn.TrimZero(nn.CAddTable(), 1)
    x = np.zeros(D)
    np.testing.assert_array_equal(m.forward([x, np.ones(D)]), np.zeros(D))
    xb, _ = _batch(4)
    y = m.forward([xb, np.ones((B, D))])
    np.testing.assert_array_equal(y[[0, 3]], 0)
    np.testing.assert_allclose(y[1], xb[1] + 1)
    gin = m.backward([xb, np.ones((B, D))], np.ones((B, D)))
    assert len(gin) == 2 and np.all(gin[1][[0, 3]] == 0) and np.all(gin[1][1] == 1)


def test_gradcheck_and_float32():
    tn.manual_seed(5)
    inner = nn.Sequential().add(nn.SelectTable(0)).add(nn.Linear(D, H)).add(nn.Tanh())
    m = nn.TrimZero(inner, 1)
    x, rng = _batch(5)
    # parameters with rows trimmed ([x]: the input, whose zero rows are a step function of
    # their entries, is left out); then the input too, on a batch without zero rows
    assert tn.testing.gradcheck_module(m, nn.MSECriterion(), [x], rng.standard_normal((B, H)))
    m = nn.TrimZero(nn.Sequential().add(nn.Linear(D, H)).add(nn.Tanh()), 1)
    x1 = rng.standard_normal((B, D))
    assert tn.testing.gradcheck_module(m, nn.MSECriterion(), x1, rng.standard_normal((B, H)))
    m.astype(np.float32)
    y = m.forward(x.astype(np.float32))
    assert y.dtype == np.float32
    assert m.backward(x.astype(np.float32), np.ones_like(y)).dtype == np.float32


def test_bad_input_dims():
    m = nn.TrimZero(nn.Linear(D, H), 2)
    with pytest.raises(ShapeError, match="n_input_dim is 2") as info:
        m.forward(np.zeros(D))
    assert "nn.TrimZero" in str(info.value)
