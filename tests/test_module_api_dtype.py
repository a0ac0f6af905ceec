"""Module dtype conversion: astype / float / double, and refusal of non-float dtypes."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def test_float_and_double_convert_parameters_and_outputs():
    m = nn.Sequencer(nn.LSTM(3, 4))
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y64 = m.forward(x).copy()
    assert m.float() is m
    assert all(p.data.dtype == np.float32 for p in m.parameters())
    y32 = m.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-6)
    m.double()
    assert m.forward(x).dtype == np.float64


@pytest.mark.parametrize("bad", [np.int32, np.float16, "not-a-dtype"])
def test_astype_refuses_non_float_dtypes(bad):
    m = nn.Linear(3, 2)
    with pytest.raises(tn.DTypeError, match="Linear"):
        m.astype(bad)
    assert m.weight.dtype == np.float64  # nothing converted
