"""The report's term for NumPy's iteration buffer of a broadcasting ufunc call
(accounting.ufunc_buffers): what NumPy really allocates for the length of the call (a bias
row added to a projection in place, the forward's `np.add(v, b, out=v)`), so a change of
NumPy's buffering shows here first, not as a report-vs-tracemalloc miss at a small shape."""

import math
import tracemalloc

import numpy as np
import pytest

from tapernn.accounting import ufunc_buffers


class _N:  # a graph node as ufunc_buffers reads it
    def __init__(self, op, shape, dtype, inputs=()):
        self.op, self.shape, self.dtype, self.inputs = op, shape, np.dtype(dtype), list(inputs)


class _G:
    def __init__(self, nodes):
        self.nodes = nodes


def _transient(f) -> int:
    f()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        f()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [8, 160, 4000])
def test_the_broadcast_add_buffer_is_what_numpy_allocates(rows, dtype):
    a = np.zeros((rows, 64), dtype)
    b = np.ones(64, dtype)
    x, bias = _N("input", (rows, 64), dtype), _N("input", (64,), dtype)
    add = _N("add", (rows, 64), dtype, [x, bias])
    ((k, modelled),) = ufunc_buffers(_G([x, bias, add]))
    assert k == 2 and modelled == min(rows * 64, np.getbufsize()) * np.dtype(dtype).itemsize
    real = _transient(lambda: np.add(a, b, out=a))
    # (the iterator's own object: ~1-2 KB beside the buffer)
    assert modelled <= real <= modelled + 2048, (real, modelled)


def test_no_buffer_without_broadcasting():
    x, y = _N("input", (160, 64), "f4"), _N("input", (160, 64), "f4")
    s = _N("input", (1, 1), "f4")
    g = _G([x, y, s, _N("add", (160, 64), "f4", [x, y]), _N("mul", (160, 64), "f4", [x, s])])
    assert ufunc_buffers(g) == []
    a = np.zeros((160, 64), np.float32)
    assert _transient(lambda: np.add(a, a, out=a)) < 2048
    assert math.prod(a.shape) * 4 > 2048


def test_no_buffer_for_a_matmul():
    """np.matmul is a (g)ufunc whose operands' shapes differ from its result's: no buffer."""
    a, w = _N("input", (160, 64), "f4"), _N("input", (64, 256), "f4")
    assert ufunc_buffers(_G([a, w, _N("matmul", (160, 256), "f4", [a, w])])) == []
    x, y = np.ones((160, 64), np.float32), np.ones((64, 256), np.float32)
    out = np.empty((160, 256), np.float32)
    assert _transient(lambda: np.matmul(x, y, out=out)) < 2048
