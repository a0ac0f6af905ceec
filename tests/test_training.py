"""Optimisers, clipping, save/load, float32 models, seeding."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def test_sgd_momentum_and_adam_follow_their_formulas():
    p = nn.Parameter(np.array([1.0, -2.0]))
    p.grad[...] = [0.5, 0.25]
    opt = tn.optim.SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    opt.step()
    np.testing.assert_allclose(
        p.data, [1.0 - 0.1 * 0.5 - 0.1 * 0.95, -2.0 - 0.1 * 0.25 - 0.1 * 0.475]
    )
    q = nn.Parameter(np.array([1.0]))
    q.grad[...] = 2.0
    adam = tn.optim.Adam([q], lr=0.1)
    adam.step()
    np.testing.assert_allclose(q.data, [0.9], rtol=1e-6)  # first Adam step moves by lr
    adam.zero_grad()
    assert q.grad[0] == 0


def test_clip_grad_norm():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(1))
    a.grad[...] = [3.0, 0.0]
    b.grad[...] = [4.0]
    assert tn.optim.clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), [0.6, 0, 0.8], rtol=1e-9)
    b.grad[...] = np.nan
    with pytest.raises(tn.NumericError):
        tn.optim.clip_grad_norm([a, b], 1.0)


def test_save_and_load_into(tmp_path):
    tn.manual_seed(0)
    model = nn.Sequential(nn.LookupTable(5, 3), nn.Sequencer(nn.FastLSTM(3, 4)))
    path = tmp_path / "model.npz"
    tn.save(model, path)
    tn.manual_seed(1)
    other = nn.Sequential(nn.LookupTable(5, 3), nn.Sequencer(nn.FastLSTM(3, 4)))
    ids = np.array([[0, 1], [2, 3]])
    assert not np.allclose(other.forward(ids), model.forward(ids))
    tn.load_into(other, path)
    np.testing.assert_array_equal(other.forward(ids), model.forward(ids))
    with pytest.raises(tn.StateError, match="missing"):
        tn.load_into(nn.Linear(2, 2), path)
    with pytest.raises(tn.StateError, match="cannot read"):
        tn.load_into(model, tmp_path / "absent.npz")


def test_float32_model_end_to_end():
    tn.manual_seed(0)
    model = nn.Sequential(nn.Sequencer(nn.LSTM(3, 4)), nn.SelectTable(-1), nn.Linear(4, 2)).astype(
        np.float32
    )
    x = np.random.default_rng(0).standard_normal((5, 2, 3))  # float64 data follows the model
    out = model.forward(x)
    assert out.dtype == np.float32
    crit = nn.CrossEntropyCriterion().astype(np.float32)
    loss = crit.forward(out, np.array([0, 1]))
    model.backward(x, crit.backward(out, np.array([0, 1])))
    assert all(
        p.grad.dtype == np.float32 and p.data.dtype == np.float32 for p in model.parameters()
    )
    ref = nn.Sequential(nn.Sequencer(nn.LSTM(3, 4)), nn.SelectTable(-1), nn.Linear(4, 2))
    ref.load_state_dict({k: v.astype(np.float64) for k, v in model.state_dict().items()})
    np.testing.assert_allclose(out, ref.forward(x), rtol=1e-5, atol=1e-6)
    assert np.isfinite(loss)


def test_manual_seed_reproduces_bit_for_bit():
    def run():
        tn.manual_seed(42)
        m = nn.Sequential(nn.Sequencer(nn.GRU(3, 3)), nn.Sequencer(nn.Dropout(0.5)))
        return m.forward(np.ones((4, 2, 3)))

    np.testing.assert_array_equal(run(), run())


def test_reset_reinitialises():
    tn.manual_seed(0)
    m = nn.LSTM(4, 4)
    before = m.w_xi.data.copy()
    m.reset()
    assert not np.allclose(before, m.w_xi.data)
    m.reset(0.01)
    assert np.abs(m.w_xi.data).max() <= 0.01
