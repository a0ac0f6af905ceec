"""Trace-time refusals a user reads: an integer to a negative integer power is refused when
traced (it failed at run time with NumPy's words), and an op's refusal inside a module names
the module (the root module too, whose scope is empty)."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import DTypeError


@pytest.mark.parametrize(
    "fn",
    [lambda a: a**-1, lambda a: a ** np.array([1, -2, 3]), lambda a: a ** np.int32(-3)],
)
def test_an_integer_to_a_negative_integer_power_is_refused_when_traced(fn):
    x = np.arange(1, 4)
    with pytest.raises(DTypeError, match=r"power: .*negative integer.*astype\(np.float64\)"):
        tn.trace(fn, x)


def test_integer_powers_that_have_integer_results_still_work():
    x = np.arange(1, 4)
    f = tn.compile(tn.trace(lambda a: a**2 + 2**a, x))
    np.testing.assert_array_equal(f(x), x**2 + 2**x)
    g = tn.compile(tn.trace(lambda a: a**-1.0, x))  # a float exponent: a float result
    np.testing.assert_allclose(g(x), 1.0 / x)


@pytest.mark.parametrize(
    "model, x, named",
    [
        (nn.Tanh(), np.arange(3), "nn.Tanh"),
        (nn.SoftMax(), np.arange(6).reshape(2, 3), "nn.SoftMax"),
        (nn.Sequential(nn.Identity(), nn.Sigmoid()), np.arange(6).reshape(2, 3), "nn.Sigmoid"),
    ],
)
def test_a_float_only_module_given_integers_names_itself(model, x, named):
    with pytest.raises(DTypeError) as e:
        model.forward(x)
    text = str(e.value)
    assert text.startswith(named + ": "), text
    assert "takes floating-point operands, got int64" in text and "astype" in text
    assert text.count("nn.") == 1, text  # (named once: the containers add nothing)


@pytest.mark.parametrize(
    "method, hint", [("any", "tapernn has no symbolic version"), ("squeeze", "use tn.reshape")]
)
def test_a_numpy_method_a_var_lacks_says_what_to_use(method, hint):
    from tapernn.errors import TracingError

    x = np.ones((2, 3))
    with pytest.raises(TracingError, match=rf"tn.Var has no attribute '{method}'.*{hint}") as e:
        tn.trace(lambda a: getattr(a, method)(), x)
    assert isinstance(e.value, AttributeError)  # (hasattr stays False)
    assert not hasattr(tn.trace(lambda a: a, x).outputs[0], "any")


def test_min_is_the_reduction_max_has():
    x = np.array([[3.0, -1.0, 2.0], [0.5, 4.0, -2.0]])
    f = tn.compile(tn.trace(lambda a: [a.min(), a.min(axis=1), tn.min(a, 0, keepdims=True)], x))
    for got, want in zip(f(x), [x.min(), x.min(axis=1), x.min(0, keepdims=True)]):
        np.testing.assert_array_equal(got, want)
    tn.gradcheck(lambda a: (a.min(axis=1) * np.array([1.0, 2.0])).sum(), x)


def test_seqbrnn_remember_is_refused_by_name_as_bisequencers():
    from tapernn.errors import StateError

    for model in (nn.SeqBRNN(3, 4), nn.BiSequencer(nn.LSTM(3, 4))):
        with pytest.raises(StateError, match=r"has no remember\(\).*whole sequence"):
            model.remember("both")


class _PyTorchStyle(nn.Cell):
    state_names = ("h", "c")

    def __init__(self):
        super().__init__(3, 4)
        self.lin = nn.Linear(7, 4)

    def step(self, x, h, c):  # PyTorch's LSTMCell habit: (output, (h, c))
        h2 = tn.tanh(self.lin(tn.concat([x, h], axis=-1)))
        return h2, (h2, c)


def test_a_cell_step_returning_output_and_state_says_what_step_returns():
    with pytest.raises(tn.TapernnError, match=r"one tn.Var per state_names \('h', 'c'\)"):
        nn.Sequencer(_PyTorchStyle()).forward(np.ones((2, 1, 3)))


def test_gradcheck_module_of_a_float32_model_says_to_check_in_float64():
    # (was: GradcheckError "module gradient mismatch": float32 central differences are noise)
    from tapernn.testing import gradcheck_module

    x, t = np.ones((3, 2, 3), np.float32), np.zeros((3, 2, 4), np.float32)
    model, criterion = nn.Sequencer(nn.GRU(3, 4)), nn.SequencerCriterion(nn.MSECriterion())
    with pytest.raises(DTypeError, match=r"float64.*\.double\(\)"):
        gradcheck_module(model.float(), criterion.float(), x, t)
    with pytest.raises(DTypeError, match=r"float64.*\.double\(\)"):
        gradcheck_module(model.double(), criterion, x, t)  # (the criterion still float32)
    assert gradcheck_module(model, criterion.double(), x.astype(np.float64), t.astype(np.float64))


def test_min_of_integers_is_refused_not_wrapped():
    # -max(-x) of uint8 [0, 5] would be 5 and of int8 [-128, 5] 5: negation wraps in integers
    for x in (np.array([0, 5], np.uint8), np.array([-128, 5], np.int8)):
        with pytest.raises(DTypeError, match=r"tn.min.*floating-point.*astype"):
            tn.trace(lambda a: a.min(), x)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int64])
def test_a_double_negation_of_integers_compiles_and_wraps_as_numpy(dtype):
    # (was: OverflowError "Python integer -1 out of bounds for uint8" from the compiler's
    # multiply-by--1 form of a negation written into a buffer, numpy_quirks)
    x = np.array([0, 5, 100], dtype)
    f = tn.compile(tn.trace(lambda a: (a * 0 - a).__neg__() + -(a + a), x))
    np.testing.assert_array_equal(f(x), (x * 0 - x).__neg__() + -(x + x))


def test_a_python_int_beyond_an_integer_vars_dtype_is_a_dtype_error():
    # (was Python's OverflowError, as NumPy 2 raises for x_uint8 * -1: no TapernnError)
    x = np.array([1, 2], np.uint8)
    with pytest.raises(DTypeError, match=r"mul: the Python int -1 does not fit uint8.*np.int16"):
        tn.trace(lambda a: a * -1, x)
    with pytest.raises(DTypeError, match=r"add: the Python int 300 does not fit uint8"):
        tn.trace(lambda a: a + 300, x)
