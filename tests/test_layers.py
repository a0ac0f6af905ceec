"""Layers, tables and containers against hand-written NumPy equations."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

R = np.random.default_rng(0)


def test_linear_forward_backward():
    tn.manual_seed(0)
    lin = nn.Linear(3, 2)
    W, b = lin.weight.data, lin.bias.data
    assert np.abs(W).max() <= 1 / np.sqrt(3)
    x, g = R.standard_normal((4, 3)), R.standard_normal((4, 2))
    np.testing.assert_allclose(lin.forward(x), x @ W.T + b, rtol=1e-14)
    lin.zero_grad_parameters()
    gi = lin.backward(x, g)
    np.testing.assert_allclose(gi, g @ W, rtol=1e-14)
    np.testing.assert_allclose(lin.weight.grad, g.T @ x, rtol=1e-14)
    np.testing.assert_allclose(lin.bias.grad, g.sum(0), rtol=1e-14)
    lin.backward(x, g)  # Torch7 semantics: parameter gradients accumulate
    np.testing.assert_allclose(lin.bias.grad, 2 * g.sum(0), rtol=1e-14)
    np.testing.assert_allclose(nn.Linear(3, 2, bias=False).forward(x).shape, (4, 2))
    assert nn.Linear(3, 2).forward(x[0]).shape == (2,)


def test_lookup_table_accumulates_repeated_ids():
    lt = nn.LookupTable(5, 2)
    ids = np.array([[0, 3], [3, 3]])
    out = lt.forward(ids)
    np.testing.assert_allclose(out, lt.weight.data[ids])
    lt.zero_grad_parameters()
    lt.backward(ids, np.ones((2, 2, 2)))
    np.testing.assert_allclose(lt.weight.grad[:, 0], [1, 0, 0, 3, 0])


@pytest.mark.parametrize(
    "module,fn",
    [
        (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
        (nn.Tanh(), np.tanh),
        (nn.ReLU(), lambda x: np.maximum(x, 0)),
        (nn.SoftMax(), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
        (nn.LogSoftMax(), lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
        (nn.Identity(), lambda x: x),
        (nn.Reshape(6), lambda x: x.reshape(2, 6)),
    ],
)
def test_transfer_layers(module, fn):
    x = (
        R.standard_normal((2, 6))
        if not isinstance(module, nn.Reshape)
        else R.standard_normal((2, 2, 3))
    )
    np.testing.assert_allclose(module.forward(x), fn(x), rtol=1e-12)
    assert module.backward(x, np.ones_like(module.output)).shape == x.shape


def test_dropout_scales_in_training_and_is_identity_in_evaluation():
    tn.manual_seed(0)
    d = nn.Dropout(0.25)
    x = np.ones((200, 50))
    y = d.forward(x)
    assert set(np.unique(y)) <= {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.02
    g = d.backward(x, np.ones_like(x))
    np.testing.assert_array_equal(g, y)  # backward reuses the forward's mask
    d.evaluate()
    np.testing.assert_array_equal(d.forward(x), x)


def test_split_join_select_narrow():
    x = R.standard_normal((3, 4, 5))
    parts = nn.SplitTable(0).forward(x)
    assert len(parts) == 3 and parts[1].shape == (4, 5)
    assert len(nn.SplitTable(0, 2).forward(x)) == 4  # 3-d input, 2 input dims: skip batch
    assert len(nn.SplitTable(-1).forward(x)) == 5
    np.testing.assert_allclose(nn.JoinTable(0).forward(parts), x.reshape(12, 5))
    np.testing.assert_allclose(
        nn.JoinTable(0, 1).forward([x[0], x[1]]), np.concatenate([x[0], x[1]], 1)
    )
    sel = nn.SelectTable(-1)
    np.testing.assert_allclose(sel.forward(parts), x[2])
    grads = sel.backward(parts, np.ones((4, 5)))
    assert [g.sum() for g in grads] == [0, 0, 20]
    narrowed = nn.NarrowTable(1, 2).forward(parts)
    assert len(narrowed) == 2 and np.allclose(narrowed[0], x[1])


def test_containers():
    tn.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 4)
    x = R.standard_normal((2, 3))
    out = nn.ConcatTable().add(a).add(b).forward(x)
    assert [o.shape for o in out] == [(2, 2), (2, 4)]
    par = nn.ParallelTable().add(a).add(nn.Tanh())
    res = par.forward([x, x])
    np.testing.assert_allclose(res[1], np.tanh(x))
    added = nn.Sequential(nn.ConcatTable(nn.Identity(), nn.Tanh()), nn.CAddTable()).forward(x)
    np.testing.assert_allclose(added, x + np.tanh(x))
    mult = nn.Sequential(nn.ConcatTable(nn.Identity(), nn.Tanh()), nn.CMulTable()).forward(x)
    np.testing.assert_allclose(mult, x * np.tanh(x))
    seq = nn.Sequential().add(a).add(nn.Tanh())
    assert seq.get(0) is a and seq[-1] is seq.get(1) and len(seq) == 2
    assert list(seq.named_parameters()) == ["0.weight", "0.bias"]
    assert "nn.Sequential {" in repr(seq) and "(0): nn.Linear(3 -> 2)" in repr(seq)
    assert repr(nn.Sequencer(nn.LSTM(5, 5))) == "nn.Sequencer @ nn.LSTM(5 -> 5)"


def test_dropout_draws_from_its_own_rng():
    x = np.ones((4, 50))
    masks = []
    for global_seed in (0, 1):
        tn.manual_seed(global_seed)
        d = nn.Dropout(0.5, rng=np.random.default_rng(7))
        masks.append([d.forward(x).copy() for _ in range(2)])
    np.testing.assert_array_equal(masks[0][0], masks[1][0])  # the global seed does not matter
    np.testing.assert_array_equal(masks[0][1], masks[1][1])
    assert not np.array_equal(masks[0][0], masks[0][1])  # a fresh mask per forward
    assert set(np.unique(masks[0][0])) == {0.0, 2.0}
    d = nn.Dropout(0.5, rng=np.random.default_rng(7))
    d.forward(x)
    np.testing.assert_array_equal(d.backward(x, np.ones_like(x)), masks[0][0])
    with pytest.raises(TypeError, match="Generator"):
        nn.Dropout(0.5, rng=7)
