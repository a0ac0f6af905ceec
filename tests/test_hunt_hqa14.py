"""QA round hqa14: a parameter's dtype through `.data` / `.grad` rebinding, and what the hunt
found (fuzzers, stacked recurrences, criterions, tables, save/load, CLI)."""

from __future__ import annotations

import numpy as np
import pytest

from tapernn import nn
from tapernn.errors import DTypeError


@pytest.mark.parametrize("field", ["data", "grad"])
@pytest.mark.parametrize("model_dtype, other", [(np.float64, np.float32), (np.float32, np.float64)])
def test_rebinding_to_another_dtype_is_refused(field, model_dtype, other):
    """Before: accepted, and the model ran in mixed precision (a float32 weight in a float64 LSTM
    moved its outputs by 3e-9, silently; a float64 grad in a float32 model stayed float64)."""
    m = nn.Sequencer(nn.LSTM(3, 4)).astype(model_dtype)
    p = m.parameters()[0]
    kept = getattr(p, field)
    with pytest.raises(DTypeError, match=rf"is float\d\d; cannot rebind its \.{field} to a"):
        setattr(p, field, getattr(p, field).astype(other))
    assert getattr(p, field) is kept and p.dtype == model_dtype
    same = getattr(p, field).astype(model_dtype, copy=True)
    setattr(p, field, same)  # the same dtype: rebinding works as before
    assert getattr(p, field) is same


def test_assigning_into_casts_and_astype_converts_both(backend):
    """`p.data[...] = w32` casts (Torch7's :copy); Module.astype converts data and grad
    together, both ways, and the outputs follow (float64 again after .double())."""
    rng = np.random.default_rng(1)
    m = nn.Sequencer(nn.GRU(3, 4))
    x = rng.standard_normal((4, 2, 3))
    y64 = np.array(m.forward(x))
    for p in m.parameters():
        p.data[...] = p.data.astype(np.float32)
        assert p.data.dtype == np.float64
    m.float()
    assert all(p.data.dtype == p.grad.dtype == np.float32 for p in m.parameters())
    y32 = np.array(m.forward(x.astype(np.float32)))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=1e-5)
    m.double()
    assert all(p.data.dtype == p.grad.dtype == np.float64 for p in m.parameters())
    y = np.array(m.forward(x))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, y64, atol=1e-6)
