"""QA round as a user (hqa27): integer data reaching a module's float math. "A float64 model
takes integer data as it is" (docs/torch7_classes.md) -- then int8 data was squared in int8
(nn.Square of 100 gave 16; nn.CAddTable of 100 + 100 gave -56, and every layer after read the
wrapped values), nn.Tanh of int8 data gave a float16 output (NumPy's rule for tanh(int8)), and
nn.Sigmoid / nn.Sqrt / nn.LogSoftMax of int64 data raised the base TapernnError with NumPy's
"Cannot cast ufunc ... output" message. Now such a call is a DTypeError naming the module's op
and the astype to make; integer data that only meets parameters (nn.Linear: int @ float is float)
or is read as ids (LookupTable, MaskZero's zero rows) stays accepted."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

INT8 = np.array([[100, -100, 3]], np.int8)


@pytest.mark.parametrize(
    "make",
    [
        nn.Square,
        nn.CMulTable,
        nn.CAddTable,
        lambda: nn.Sequential().add(nn.Square()).add(nn.Linear(3, 2)),
        nn.Tanh,
        nn.Sigmoid,
        nn.Exp,
        nn.SoftMax,
    ],
)
def test_narrow_integer_data_into_float_math_is_refused(make):
    module = make()
    data = [INT8, INT8] if isinstance(module, (nn.CMulTable, nn.CAddTable)) else INT8
    with pytest.raises(tn.DTypeError, match=r"int8.*astype\(np.float64\)"):
        module.forward(data)


@pytest.mark.parametrize("make", [nn.Sigmoid, nn.Sqrt, nn.LogSoftMax, nn.Tanh])
def test_int64_data_into_float_only_functions_is_refused(make):
    with pytest.raises(tn.DTypeError, match="int64"):
        make().forward(np.array([[2, 1, 3]]))


def test_integer_data_a_layer_with_parameters_reads_is_still_taken():
    lin = nn.Linear(3, 2)
    for dtype in (np.int8, np.int64, np.uint8):
        x = INT8.astype(dtype)
        expected = x.astype(float) @ lin.weight.data.T + lin.bias.data
        np.testing.assert_allclose(lin.forward(x), expected, rtol=1e-14)
    model = nn.Sequential().add(nn.Linear(3, 2)).add(nn.Tanh())
    assert model.forward(INT8).dtype == np.float64


def test_ids_stay_integers():
    ids = np.array([[1, 0], [2, 3]], np.uint8)  # (T=2, B=2), 0 is padding
    lookup = nn.LookupTableMaskZero(4, 3)
    model = nn.Sequential().add(lookup).add(nn.Sequencer(nn.GRU(3, 2)))
    assert model.forward(ids).shape == (2, 2, 2)
    masked = nn.Sequencer(nn.MaskZero(nn.LookupTable(5, 3), 1))
    out = masked.forward(np.array([[1, 0], [0, 4]], np.int16)[:, :, None])  # (T, B, 1) ids
    assert np.all(out[0, 1] == 0) and np.all(out[1, 0] == 0) and np.all(out[0, 0] != 0)


def test_copy_of_integer_data_stays_accepted():
    """nn.Copy() is `x + 0`: no wrap possible, so no refusal (an early version refused it)."""
    out = nn.Copy().forward(INT8)
    np.testing.assert_array_equal(out, INT8)
    converted = nn.Sequential().add(nn.Copy(np.float64)).add(nn.Square()).forward(INT8)
    np.testing.assert_array_equal(converted, INT8.astype(float) ** 2)
