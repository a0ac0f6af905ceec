"""tn.grad and integer inputs (hdtype): with wrt=None the gradients are those of the
floating-point inputs (API: "wrt defaults to all inputs" -- every one that has a gradient); an
integer or bool input named in `wrt` is a DTypeError saying what to pass. Before, tn.grad(g,
wrt=[0]) of an int64 input appended an int64 array of zeros as its "gradient" (a silent wrong
answer: the function of the input's float values has a nonzero gradient)."""

import numpy as np
import pytest

import tapernn as tn


def test_an_integer_input_named_in_wrt_is_refused():
    graph = tn.trace(lambda a, b: tn.sum(a * b), np.ones(3), np.arange(3))
    for wrt in ([1], 1, "x1", [graph.inputs[1]], [0, 1]):
        with pytest.raises(tn.DTypeError, match=r"x1.*int64.*astype\(np.float64\)"):
            tn.grad(graph, wrt=wrt)
    flags = tn.trace(lambda a, m: tn.sum(tn.where(m, a, 0.0)), np.ones(3), np.ones(3, bool))
    with pytest.raises(tn.DTypeError, match="x1.*bool"):
        tn.grad(flags, wrt=[1])


def test_by_default_the_float_inputs_are_differentiated():
    graph = tn.grad(tn.trace(lambda a, b: tn.sum(a * b), np.ones(3), np.arange(3)))
    assert graph.meta.wrt == ("x0",)
    _, da = tn.compile(graph)(np.ones(3), np.arange(3))
    np.testing.assert_array_equal(da, [0.0, 1.0, 2.0])
    assert tn.grad(graph, wrt=[0]).meta.wrt == ("x0",)  # (a float input named: as before)


def test_a_float_function_of_integer_data_is_differentiated_after_a_cast():
    """The fix the message names: the data as floats, then its gradient (2 x)."""
    x = np.arange(3)
    graph = tn.grad(tn.trace(lambda a: tn.sum(a * a), x.astype(np.float64)), wrt=[0])
    np.testing.assert_array_equal(tn.compile(graph)(x.astype(np.float64))[1], 2.0 * x)
