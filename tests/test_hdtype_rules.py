"""The integer / bool rules README "Integer and bool data" states, by value (hdtype): a float-only
op's refusal names the op and the cast; an integer meeting a float computes in float; integer
sums count in int64 without wrapping (before: the node said int8 while NumPy returned int64);
NumPy's wrapping integer arithmetic under tn.trace, refused for a module's data."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

X8 = np.array([[100, -128, 3], [50, 60, 70]], np.int8)


@pytest.mark.parametrize(
    "fn,op",
    [(tn.tanh, "tanh"), (tn.sigmoid, "sigmoid"), (lambda a: a / 2, "div"), (tn.softmax, "softmax")],
)
def test_a_float_only_op_of_integers_names_the_op_and_the_cast(fn, op):
    with pytest.raises(tn.DTypeError, match=rf"^{op}: .*int8.*x\.astype\(np\.float64\)"):
        tn.trace(fn, X8)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_integers_meeting_floats_and_integer_sums(backend):
    cases = [
        (lambda a: a / 2.0, X8 / 2.0),
        (lambda a: a * 0.5, X8 * 0.5),
        (lambda a: tn.tanh(tn.cast(a, np.float64)), np.tanh(X8.astype(np.float64))),
        (lambda a: tn.sum(a), np.int64(X8.astype(np.int64).sum())),  # 195 - 128 + ...: no wrap
        (lambda a: tn.sum(a, 1), X8.astype(np.int64).sum(1)),
        (lambda a: tn.mean(a, 0), X8.astype(np.float64).mean(0)),
        (lambda a: tn.sum(a > 0), np.int64(5)),  # a count of a mask
    ]
    for fn, expected in cases:
        graph = tn.trace(fn, X8)
        out = tn.compile(graph, backend=backend)(X8)
        assert out.dtype == graph.outputs[0].dtype == expected.dtype
        np.testing.assert_array_equal(out, expected)


def test_narrow_integer_arithmetic_wraps_under_trace_and_is_refused_in_a_module():
    out = tn.compile(tn.trace(lambda a: tn.abs(a) + a * a, X8))(X8)
    np.testing.assert_array_equal(out, np.abs(X8) + X8 * X8)  # NumPy's int8, wrapped
    assert out.dtype == np.int8
    with pytest.raises(tn.DTypeError, match=r"int8.*wrap around.*astype\(np.float64\)"):
        nn.Square().forward(X8)


def test_bool_masks():
    m = np.array([True, False, True])
    for fn in (lambda a: -a, lambda a: a - a, tn.relu, lambda a: a**a):
        with pytest.raises(tn.DTypeError, match=r"bool.*astype"):
            tn.trace(fn, m)
    graph = tn.trace(lambda a, b: [a + b, a * b], m, ~m)
    or_, and_ = tn.compile(graph)(m, ~m)
    assert or_.dtype == and_.dtype == np.bool_
    np.testing.assert_array_equal(or_, m | ~m)
    np.testing.assert_array_equal(and_, m & ~m)
