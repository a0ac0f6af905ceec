"""optim.subtract_scaled's in-place numba loop (backends/numba_update.py, htiny7): once numba is
imported, a parameter array of at most CHUNK elements is updated with no temporary, bit for bit
NumPy's `data -= lr * step`; anything else (a NumPy-scalar lr, mixed dtypes, non-contiguous or
overlapping arrays, a process without numba imported) takes NumPy's form; the report's update
term follows (optim.update_temp_bytes)."""

import sys
import tracemalloc

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn, optim
from tapernn.apps.benchmark.memory import NUMPY_DOMAIN
from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed")


@pytest.fixture(autouse=True)
def _numba_loaded():
    import numba  # noqa: F401 (the kernel is used once numba is imported)

    assert optim.inplace_kernel() is not None


def _array_allocations(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        snap = tracemalloc.take_snapshot()
        return sum(
            t.size
            for t in snap.filter_traces([tracemalloc.DomainFilter(True, NUMPY_DOMAIN)]).traces
        )
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(235,), (47, 5), (3, 11, 7), (optim.CHUNK,)])
def test_same_bits_as_numpy_and_no_temporary(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    for lr in (1e-3, 0.1, 0.7, 1.3e-5, 3.0):
        data = (rng.standard_normal(shape) * 10).astype(dtype)
        step = rng.standard_normal(shape).astype(dtype)
        want = data.copy()
        want -= lr * step
        got = data.copy()
        optim.subtract_scaled(got, step, lr)
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), (lr, got - want)
    # no array made: the temporary `lr * step` is gone
    peak = {}

    def update():
        tracemalloc.reset_peak()
        optim.subtract_scaled(got, step, 1e-3)
        peak["bytes"] = tracemalloc.get_traced_memory()[1] - tracemalloc.get_traced_memory()[0]

    _array_allocations(update)
    assert peak["bytes"] < step.nbytes, peak  # (NumPy's form: at least step.nbytes)


def test_the_same_array_and_the_numpy_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(50).astype(np.float32)
    want = a.copy()
    want -= 0.3 * want
    optim.subtract_scaled(a, a, 0.3)  # (data is step: each element reads only itself)
    assert np.array_equal(a, want)
    cases = {
        "NumPy scalar lr (float64: not cast first)": (
            rng.standard_normal(40).astype(np.float32),
            rng.standard_normal(40).astype(np.float32),
            np.float64(0.1),
        ),
        "mixed dtypes": (
            rng.standard_normal(40).astype(np.float32),
            rng.standard_normal(40),
            0.1,
        ),
        "non-contiguous": (rng.standard_normal((8, 10))[:, ::2], rng.standard_normal((8, 5)), 0.1),
    }
    for what, (data, step, lr) in cases.items():
        want = data.copy()
        want -= lr * step
        got = data.copy()
        optim.subtract_scaled(got, step, lr)
        assert np.array_equal(got, want), what
    base = rng.standard_normal(60)  # overlapping views: NumPy's buffered semantics
    want = base.copy()
    want[10:50] -= 0.5 * want[5:45]
    optim.subtract_scaled(base[10:50], base[5:45], 0.5)
    assert np.array_equal(base, want)


def test_without_numba_imported_numpy_updates(monkeypatch):
    monkeypatch.setattr(optim, "_KERNEL", [])
    monkeypatch.setitem(sys.modules, "numba", None)
    assert optim.inplace_kernel() is None
    assert optim.update_temp_bytes([400], 4) == 400
    data, step = np.ones(100, np.float32), np.ones(100, np.float32)
    seen = {}

    def update():
        tracemalloc.reset_peak()
        optim.subtract_scaled(data, step, 0.5)
        seen["bytes"] = tracemalloc.get_traced_memory()[1] - tracemalloc.get_traced_memory()[0]

    _array_allocations(update)
    assert seen["bytes"] >= step.nbytes and np.all(data == 0.5)


def test_update_parameters_and_the_report():
    """A module's update equals NumPy's, bit for bit, and its compile report counts no update
    temporary for parameters this small (optim.update_temp_bytes)."""
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.LSTM(5, 5)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((5, 1, 5)).astype(np.float32)
    seq.zero_grad_parameters()
    seq.forward(x)
    seq.backward(x, np.ones_like(x))
    before = {k: (p.data.copy(), p.grad.copy()) for k, p in seq.named_parameters().items()}
    seq.update_parameters(1e-2)
    for k, p in seq.named_parameters().items():
        want = before[k][0].copy()
        want -= 1e-2 * before[k][1]
        assert np.array_equal(p.data, want), k
    assert optim.update_temp_bytes([2000], 4) == 0
    assert optim.update_temp_bytes([optim.CHUNK * 8], 4) == optim.CHUNK * 4


def test_a_kernel_that_fails_leaves_numpys_update(monkeypatch):
    """numba failing to compile or load the kernel (e.g. a cache written for the package
    under another module name) never fails an update: NumPy's form, from then on."""

    def broken(*args):
        raise RuntimeError("cannot load")

    broken.py_func = optim.inplace_kernel().py_func
    monkeypatch.setattr(optim, "_KERNEL", [broken])
    monkeypatch.setattr(optim, "_RETRIED", [])
    data, step = np.full(30, 2.0, np.float32), np.ones(30, np.float32)
    optim.subtract_scaled(data, step, 0.5)  # (NumPy's form; the kernel compiled again, uncached)
    assert np.all(data == 1.5) and optim._KERNEL[0] is not broken and optim._RETRIED
    optim.subtract_scaled(data, step, 0.5)
    assert np.all(data == 1.0)
    monkeypatch.setattr(optim, "_KERNEL", [broken])  # (failing again: NumPy's form for good)
    optim.subtract_scaled(data, step, 0.5)
    assert np.all(data == 0.5) and optim._KERNEL == [None]
    assert optim.update_temp_bytes([120], 4) == 120
