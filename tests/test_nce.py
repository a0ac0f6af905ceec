"""NCEModule and NCECriterion against hand-written NumPy equations (noise-contrastive estimation,
Torch7's dpnn / torch/rnn semantics with batch noise)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import ShapeError, TapernnError

R = np.random.default_rng(0)
TOL = {"rtol": 1e-10, "atol": 1e-12}
D, V, K, B = 4, 9, 5, 6
COUNTS = np.arange(1.0, V + 1) ** 1.5  # distinct probabilities: the noise ids are read back


def noise_ids(module, pns):
    """The sampled ids, recovered from P_n(samples) (every unigram probability is distinct)."""
    ids = np.array([int(np.argmin(np.abs(module.unigram - p))) for p in pns[0]])
    np.testing.assert_allclose(module.unigram[ids], pns[0], rtol=0, atol=0)
    return ids


def test_nce_module_training_output_and_gradients_match_equations():
    tn.manual_seed(3)
    m = nn.NCEModule(D, V, K, COUNTS, z=2.5)
    W, b = m.weight.data, m.bias.data
    np.testing.assert_allclose(b, -np.log(V) * np.ones(V))
    x, t = R.standard_normal((B, D)), np.array([0, 3, 8, 3, 5, 1])
    pmt, pms, pnt, pns = m.forward([x, t])
    ids = noise_ids(m, pns)
    p = COUNTS / COUNTS.sum()
    e_t = np.exp((x * W[t]).sum(1) + b[t])
    e_s = np.exp(x @ W[ids].T + b[ids])
    np.testing.assert_allclose(pmt, e_t / 2.5, **TOL)
    np.testing.assert_allclose(pms, e_s / 2.5, **TOL)
    np.testing.assert_allclose(pnt, p[t], **TOL)
    np.testing.assert_allclose(pns, np.broadcast_to(p[ids], (B, K)), **TOL)
    assert np.all(pns == pns[0])  # batch noise: k samples shared by the batch
    gt, gs = R.standard_normal(B), R.standard_normal((B, K))
    m.zero_grad_parameters()
    gx, gtarget = m.backward([x, t], [gt, gs, R.standard_normal(B), R.standard_normal((B, K))])
    dt, ds = gt * pmt, gs * pms  # d/d score = gradient * P_m (exp, then / Z constant)
    np.testing.assert_allclose(gx, dt[:, None] * W[t] + ds @ W[ids], **TOL)
    gW, gb = np.zeros_like(W), np.zeros_like(b)
    np.add.at(gW, t, dt[:, None] * x)
    np.add.at(gW, ids, ds.T @ x)
    np.add.at(gb, t, dt)
    np.add.at(gb, ids, ds.sum(0))
    np.testing.assert_allclose(m.weight.grad, gW, **TOL)
    np.testing.assert_allclose(m.bias.grad, gb, **TOL)
    np.testing.assert_array_equal(gtarget, np.zeros(B))


def test_nce_z_is_estimated_on_the_first_batch_only():
    tn.manual_seed(4)
    m = nn.NCEModule(D, V, K, COUNTS)
    assert m.z == -1
    x, t = R.standard_normal((B, D)), np.array([0, 1, 2, 3, 4, 5])
    _, pms, _, pns = m.forward([x, t])
    ids = noise_ids(m, pns)
    W, b = m.weight.data, m.bias.data
    e_s = np.exp(x @ W[ids].T + b[ids])
    z = V * e_s.mean()
    assert m.z == pytest.approx(z, rel=1e-12)
    np.testing.assert_allclose(pms, e_s / z, **TOL)
    x2 = R.standard_normal((B, D))
    pmt2, *_ = m.forward([x2, t])
    assert m.z == pytest.approx(z, rel=1e-12)  # kept, not estimated again
    np.testing.assert_allclose(pmt2, np.exp((x2 * W[t]).sum(1) + b[t]) / z, **TOL)


def test_nce_module_evaluation_is_the_exact_log_softmax():
    m = nn.NCEModule(D, V, K, COUNTS).evaluate()
    x = R.standard_normal((B, D))
    s = x @ m.weight.data.T + m.bias.data
    ref = s - np.log(np.exp(s).sum(1, keepdims=True))
    np.testing.assert_allclose(m.forward(x), ref, **TOL)
    np.testing.assert_allclose(m.forward([x, np.zeros(B, np.int64)]), ref, **TOL)


def test_nce_noise_follows_the_unigram_distribution():
    m = nn.NCEModule(D, V, 20000, COUNTS, rng=np.random.default_rng(0))
    freq = np.bincount(m.draw_noise(), minlength=V) / 20000
    np.testing.assert_allclose(freq, m.unigram, atol=0.01)
    zero = nn.NCEModule(D, 3, 2000, np.array([1.0, 0.0, 3.0]), rng=np.random.default_rng(1))
    assert 1 not in zero.draw_noise()  # a zero count is never drawn


def test_nce_criterion_matches_equations():
    pmt, pms = R.random(B) * 0.3, R.random((B, K)) * 0.3
    pnt, pns = R.random(B) * 0.2, np.broadcast_to(R.random(K) * 0.2, (B, K)).copy()
    eps, k = 1e-7, float(K)
    ref = (
        -(np.log(pmt / (pmt + k * pnt + eps)).sum() + np.log(k * pns / (pms + k * pns + eps)).sum())
        / B
    )
    crit = nn.NCECriterion()
    assert crit.forward([pmt, pms, pnt, pns], None) == pytest.approx(ref, rel=1e-12)
    g = crit.backward([pmt, pms, pnt, pns], None)
    np.testing.assert_allclose(g[0], -(1 / pmt - 1 / (pmt + k * pnt + eps)) / B, **TOL)
    np.testing.assert_allclose(g[1], 1 / (pms + k * pns + eps) / B, **TOL)
    np.testing.assert_array_equal(g[2], np.zeros(B))  # noise probabilities: no gradient
    np.testing.assert_array_equal(g[3], np.zeros((B, K)))
    raw = nn.NCECriterion(size_average=False)
    assert raw.forward([pmt, pms, pnt, pns]) == pytest.approx(ref * B, rel=1e-12)


def test_nce_gradcheck_through_module_and_criterion():
    tn.manual_seed(5)
    m = nn.NCEModule(D, V, K, COUNTS, z=1.3)
    x, t = R.standard_normal((B, D)), np.array([0, 3, 8, 3, 5, 1])
    assert tn.testing.gradcheck_module(m, nn.NCECriterion(), [x, t], t)


def test_nce_float32_and_training_lowers_the_exact_nll():
    tn.manual_seed(6)
    rng = np.random.default_rng(6)
    m = nn.NCEModule(D, V, K, COUNTS).float()
    crit = nn.NCECriterion().float()
    x, t = rng.standard_normal((B, D)).astype(np.float32), np.array([0, 3, 8, 3, 5, 1])

    def exact_nll():
        m.evaluate()
        logp = m.forward(x)
        m.training()
        assert logp.dtype == np.float32
        return -logp[np.arange(B), t].mean()

    before, losses = exact_nll(), []
    for _ in range(200):
        m.zero_grad_parameters()
        out = m.forward([x, t])
        assert all(o.dtype == np.float32 for o in out)
        losses.append(crit.forward(out, t))
        m.backward([x, t], crit.backward(out, t))
        m.update_parameters(0.5)
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])
    assert exact_nll() < before - 0.5  # NCE training raised the true likelihood


def test_nce_bad_inputs_raise_named_errors():
    with pytest.raises(tn.ArgumentError, match="k must"):
        nn.NCEModule(D, V, 0, COUNTS)
    with pytest.raises(tn.ArgumentError, match="noise"):
        nn.NCEModule(D, V, K, COUNTS[:-1])
    with pytest.raises(tn.ArgumentError, match="noise"):
        nn.NCEModule(D, 3, K, np.array([1.0, -1.0, 2.0]))
    m = nn.NCEModule(D, V, K, COUNTS)
    x = R.standard_normal((B, D))
    with pytest.raises(ShapeError, match="target"):
        m.forward(x)  # training needs the targets
    with pytest.raises(ShapeError, match="NCEModule"):
        m.forward([R.standard_normal((B, D + 1)), np.zeros(B, np.int64)])
    with pytest.raises(TapernnError, match="out of range|id"):
        m.forward([x, np.full(B, V)])
    with pytest.raises(ShapeError, match="ClassNLLCriterion"):
        nn.NCECriterion().forward(np.zeros((B, V)), np.zeros(B, np.int64))


def test_nce_in_a_sequencer_estimates_z_at_the_first_step_only():
    tn.manual_seed(7)
    m = nn.NCEModule(D, V, K, COUNTS)
    xs = [R.standard_normal((B, D)) for _ in range(3)]
    ts = [R.integers(0, V, B) for _ in range(3)]
    outs = nn.Sequencer(m).forward([[x, t] for x, t in zip(xs, ts)])
    W, b = m.weight.data, m.bias.data
    ids0 = noise_ids(m, outs[0][3])
    z = V * np.exp(xs[0] @ W[ids0].T + b[ids0]).mean()
    assert m.z == pytest.approx(z, rel=1e-12)
    for x, t, (pmt, *_) in zip(xs, ts, outs):
        np.testing.assert_allclose(pmt, np.exp((x * W[t]).sum(1) + b[t]) / z, **TOL)
