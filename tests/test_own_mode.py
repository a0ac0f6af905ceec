"""A module put in evaluation mode alone (`child.evaluate()` under a training root) behaves as
evaluating, as Torch7's per-module `train` flag: NormStabilizer adds no penalty, NCEModule is the
full log-softmax, ReinforceNormal outputs its mean. Before, they read the root's mode and trained
silently. Oracles: the same model without the module, or NumPy equations."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

rng = np.random.default_rng(3)
X3 = rng.standard_normal((4, 2, 3))
X2 = rng.standard_normal((5, 3))


def _grads(m, x, gy):
    m.zero_grad_parameters()
    y = np.array(m.forward(x), copy=True)
    gx = np.array(m.backward(x, gy), copy=True)
    return [y, gx] + [p.grad.copy() for p in m.parameters()]


@pytest.mark.parametrize("called_first", [False, True])
def test_norm_stabilizer_evaluating_alone_adds_no_penalty(called_first):
    tn.manual_seed(0)
    cell = nn.RNN(3, 4)
    ns = nn.NormStabilizer(5.0)
    model = nn.Sequencer(nn.Sequential(cell, ns))
    gy = np.full((4, 2, 4), 0.1)
    if called_first:  # traced in training first: the mode change must retrace
        _grads(model, X3, gy)
        _grads(model, X3, gy)
    ns.evaluate()
    got = _grads(model, X3, gy)
    bare = nn.Sequencer(nn.Sequential(cell))  # the same cell, no stabilizer
    want = _grads(bare, X3, gy)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    ns.training()  # and back: the penalty again
    again = _grads(model, X3, gy)
    assert not np.allclose(again[1], want[1])


class _Pair(nn.Module):
    """[x, target] -> NCEModule([linear(x), target]) (a root around the NCE module)."""

    def __init__(self, nce):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.nce = nce
        self.add_child("lin", self.lin)
        self.add_child("nce", self.nce)

    def build(self, inp):
        return self.nce([self.lin(inp[0]), inp[1]])


@pytest.mark.parametrize("called_first", [False, True])
def test_nce_evaluating_alone_is_the_full_softmax(called_first):
    nce = nn.NCEModule(3, 6, 2, np.ones(6), z=1.0, rng=np.random.default_rng(0))
    model = _Pair(nce)
    ids = np.array([0, 1, 2, 3, 4])
    if called_first:
        out = model.forward([X2, ids])
        assert isinstance(out, list) and len(out) == 4  # training: NCE's four outputs
        model.forward([X2, ids])
    nce.evaluate()
    y = model.forward([X2, ids])
    h = X2 @ model.lin.weight.data.T + model.lin.bias.data
    s = h @ nce.weight.data.T + nce.bias.data
    want = s - np.log(np.exp(s).sum(1, keepdims=True))
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-12, atol=1e-12)
    gx = model.backward([X2, ids], np.ones((5, 6)))  # backward through the softmax
    assert np.all(np.isfinite(gx[0]))
    nce.training()
    out = model.forward([X2, ids])
    assert isinstance(out, list) and len(out) == 4


@pytest.mark.parametrize("called_first", [False, True])
def test_reinforce_normal_evaluating_alone_outputs_its_mean(called_first):
    tn.manual_seed(0)
    lin = nn.Linear(3, 3)
    rn = nn.ReinforceNormal(0.5)
    model = nn.Sequential(lin, rn)
    if called_first:
        model.forward(X2)
        rn.reinforce(np.ones(5))
        model.backward(X2, np.zeros((5, 3)))
    rn.evaluate()
    y = model.forward(X2)
    np.testing.assert_allclose(y, X2 @ lin.weight.data.T + lin.bias.data, rtol=1e-12)
    # Torch7's gradient -r (output - mean) / stdev^2 is zero; the output gradient is dropped
    gx = model.backward(X2, np.ones((5, 3)))
    np.testing.assert_array_equal(gx, np.zeros((5, 3)))
    rn.stochastic = True  # stochastic: samples in evaluation too
    assert not np.allclose(model.forward(X2), y)
