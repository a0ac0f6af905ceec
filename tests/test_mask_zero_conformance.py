"""MaskZero on an unbatched input (one 1-D vector is one row, Element-RNN's MaskZero(m, 1)) and
MaskZeroCriterion never reading a masked row's target (Element-RNN tests MaskZero_main,
MaskZeroCriterion, SequencerCriterion)."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_mask_zero_takes_one_unbatched_vector_as_one_row():
    m = nn.MaskZero(nn.Sigmoid())
    np.testing.assert_allclose(m.forward(np.ones(10)), sigmoid(np.ones(10)), rtol=1e-15)
    np.testing.assert_array_equal(m.forward(np.zeros(10)), np.zeros(10))  # sigmoid(0) masked
    np.testing.assert_array_equal(m.backward(np.zeros(10), np.ones(10)), np.zeros(10))
    x = np.linspace(-1, 1, 10)
    m.forward(x)
    np.testing.assert_allclose(
        m.backward(x, np.ones(10)), sigmoid(x) * (1 - sigmoid(x)), rtol=1e-14
    )


def test_mask_zero_unbatched_with_another_output_shape_and_batched_rows():
    tn.manual_seed(0)
    lin = nn.Linear(4, 3)
    m = nn.MaskZero(lin)
    x = np.array([0.5, -1.0, 2.0, 0.25])
    np.testing.assert_allclose(m.forward(x), x @ lin.weight.data.T + lin.bias.data, rtol=1e-14)
    np.testing.assert_array_equal(m.forward(np.zeros(4)), np.zeros(3))
    batch = np.stack([x, np.zeros(4), -x])
    out = m.forward(batch)
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_allclose(
        out[[0, 2]], batch[[0, 2]] @ lin.weight.data.T + lin.bias.data, rtol=1e-14
    )
    with pytest.raises(tn.TapernnError):
        m.forward(np.float64(1.0))  # a scalar is no row


def test_mask_zero_criterion_never_reads_a_masked_rows_class_target():
    rng = np.random.default_rng(0)
    x = np.log(rng.dirichlet(np.ones(4), size=3))
    x[1] = 0.0
    target = np.array([2, -1, 0])  # -1: not a class, but its row is masked
    crit = nn.MaskZeroCriterion(nn.ClassNLLCriterion())
    kept = nn.ClassNLLCriterion()
    assert crit.forward(x, target) == pytest.approx(
        kept.forward(x[[0, 2]], target[[0, 2]]), rel=1e-14
    )
    g = crit.backward(x, target)
    np.testing.assert_array_equal(g[1], 0)
    np.testing.assert_allclose(g[[0, 2]], kept.backward(x[[0, 2]], target[[0, 2]]), rtol=1e-14)
    for bad in (np.array([7, 0, 0]), np.array([-1, 0, 0])):  # an unmasked row is still checked
        with pytest.raises(tn.ValueRangeError):
            crit.forward(x, bad)


def test_mask_zero_criterion_never_reads_a_masked_rows_float_target():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    x[0] = 0.0
    y[0] = np.nan  # whatever sits there is not read
    crit = nn.MaskZeroCriterion(nn.MSECriterion())
    assert crit.forward(x, y) == pytest.approx(nn.MSECriterion().forward(x[1:], y[1:]), rel=1e-14)
    g = crit.backward(x, y)
    assert np.isfinite(g).all()
    np.testing.assert_array_equal(g[0], 0)


def test_sequencer_criterion_of_mask_zero_criterion_with_padding_targets():
    rng = np.random.default_rng(2)
    T, Bsz, C = 3, 4, 5
    xs = [np.log(rng.dirichlet(np.ones(C), size=Bsz)) for _ in range(T)]
    ts = [rng.integers(0, C, Bsz) for _ in range(T)]
    for t in range(T):  # row t is padding at step t, its target an invalid -1
        xs[t][t] = 0.0
        ts[t][t] = -1
    crit = nn.SequencerCriterion(nn.MaskZeroCriterion(nn.ClassNLLCriterion()))
    expected = sum(
        nn.ClassNLLCriterion().forward(np.delete(xs[t], t, 0), np.delete(ts[t], t))
        for t in range(T)
    )
    assert crit.forward(xs, ts) == pytest.approx(expected, rel=1e-13)
    grads = crit.backward(xs, ts)
    for t in range(T):
        np.testing.assert_array_equal(grads[t][t], 0)


@pytest.mark.parametrize("wrap", ["MaskZero", "mask_zero"])
def test_a_row_of_tiny_entries_is_data_not_padding(wrap):
    """Where tapernn deliberately differs from Torch7 (docs/stateful.md): a float64 row whose
    entries are all below ~1e-162 has a norm of 0 in Torch7 (the squares underflow), padding
    there; tapernn tests the largest |entry|, so the row is data. A +/-0 row is padding in both."""
    x = np.zeros((3, 2, 4))  # (T, B, D)
    x[:, 0] = 1e-163
    x[1, 0, 2] = -1e-170
    x[:, 1] = [[0.0, -0.0, 0.0, -0.0]] * 3
    assert np.all(np.sqrt(np.sum(x[:, 0] ** 2, axis=-1)) == 0)  # (Torch7's test: padding)
    tn.manual_seed(0)
    cell = nn.LSTM(4, 3)
    seq = nn.Sequencer(cell.mask_zero() if wrap == "mask_zero" else nn.MaskZero(cell, 1))
    tn.manual_seed(0)
    plain = nn.Sequencer(nn.LSTM(4, 3))
    out, ref = seq.forward(x), plain.forward(x)
    np.testing.assert_array_equal(out[:, 0], ref[:, 0])  # the tiny row: data, as unmasked
    assert np.all(out[:, 0] != 0)
    np.testing.assert_array_equal(out[:, 1], np.zeros((3, 3)))  # the +/-0 row: padding


def test_mask_zero_criterion_takes_torch7s_n_input_dim():
    """Torch7's MaskZeroCriterion(criterion, nInputDim): a (B, C) batch of 1-D rows with
    nInputDim 1 is what it is without; an input of another rank is refused, naming the dims."""
    rng = np.random.default_rng(2)
    x = np.log(rng.dirichlet(np.ones(4), size=3))
    x[2] = 0.0
    target = np.array([1, 3, -1])
    with_dim = nn.MaskZeroCriterion(nn.ClassNLLCriterion(), 1)
    kept = nn.ClassNLLCriterion()
    assert with_dim.forward(x, target) == pytest.approx(kept.forward(x[:2], target[:2]), rel=1e-14)
    g = with_dim.backward(x, target)
    np.testing.assert_array_equal(g[2], 0)
    np.testing.assert_allclose(g[:2], kept.backward(x[:2], target[:2]), rtol=1e-14)
    y = rng.standard_normal((3, 2, 2))
    with pytest.raises(tn.ShapeError, match="n_input_dim 1: 2 dims"):
        nn.MaskZeroCriterion(nn.MSECriterion(), 1).forward(y, y)
    mse = nn.MaskZeroCriterion(nn.MSECriterion(), 2)
    y[0] = 0.0
    t = rng.standard_normal((3, 2, 2))
    assert mse.forward(y, t) == pytest.approx(nn.MSECriterion().forward(y[1:], t[1:]), rel=1e-14)
    for bad in (0, -1, 1.5):
        with pytest.raises(tn.TapernnError):
            nn.MaskZeroCriterion(nn.MSECriterion(), bad)
