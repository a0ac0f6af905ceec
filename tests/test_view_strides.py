"""Reshapes that copy (view_strides.py): found as NumPy finds them, freed after their last read,
counted in a program's per-call peak; and the update's temporary the compile report adds.
Found by the rolled GRU's training loop: its backward merged rows and columns of the reverse
loop's slab (`slab[:, a:b].reshape(T * B, H)`, four copies kept to the end of the program)."""

import gc
import tracemalloc

import numpy as np
import pytest

import tapernn as tn
from tapernn.backends import background
from tapernn.nn.training_pair import per_call_peak
from tapernn.optim import CHUNK, subtract_scaled, update_temp_bytes
from tapernn.view_strides import copying_reshapes

CHAINS = {  # name -> the same view chain on a Var and on a NumPy array
    "columns merged with rows": lambda x: x[:, 0:4].reshape(24),
    "columns split": lambda x: x[:, 0:4].reshape(6, 2, 2),
    "leading rows merged": lambda x: x[0:3].reshape(36),
    "transposed merged": lambda x: x.T.reshape(72),
    "transposed regrouped": lambda x: x.T.reshape(6, 12),
    "rows of a regrouping, split": lambda x: x.reshape(3, 24)[:, 0:12].reshape(3, 2, 6),
    "columns of a product merged": lambda x: (x * 2.0)[:, 1:3].reshape(12),
    "a strided step": lambda x: x[::2].reshape(36),
}


def _peak(fn) -> int:
    """fn's peak above what was traced before it: the least of three calls, after the background
    compile worker is idle -- tracemalloc sees every thread, and a worker's allocations inside the
    window only ever add (a suite run once read 88 KB more in subtract_scaled)."""
    background.wait(timeout=600)
    peaks = []
    for _ in range(3):
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            fn()
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
        finally:
            tracemalloc.stop()
    return min(peaks)


def test_copying_reshapes_are_the_reshapes_numpy_copies():
    x = np.arange(72.0).reshape(6, 12)
    graph = tn.trace(lambda v: [chain(v) for chain in CHAINS.values()], x)
    found = copying_reshapes(graph)
    for (name, chain), out in zip(CHAINS.items(), graph.outputs):
        assert out.op == "reshape", name
        copies = not np.shares_memory(chain(x), x)
        assert (out in found) == copies, f"{name}: NumPy copies: {copies}"
    assert 0 < len(found) < len(CHAINS)


def test_a_copying_reshape_is_freed_after_its_last_read_and_counted():
    """Before: the copy of a view of an input lived to the end of the program (no `del`: a
    view of an input frees nothing) and the per-call peak did not count it."""
    x = np.random.default_rng(0).standard_normal((64, 256))

    def f(v):
        s = tn.sum(tn.reshape(v[:, 0:128], (64 * 128,)))  # a 64 KiB copy, read once
        return tn.exp(v) * s  # 128 KiB returned, made after the copy is dead

    c = tn.compile(tn.trace(f, x))
    np.testing.assert_allclose(c.run([x])[0], np.exp(x) * x[:, :128].sum(), rtol=1e-12)
    assert len(copying_reshapes(c.graph)) == 1
    assert "del" in c.program.source
    real = _peak(lambda: c.run([x]))
    want = per_call_peak(c)
    assert abs(real - want) <= 0.05 * want, f"tracemalloc {real:,} B, per_call_peak {want:,} B"


def test_a_copy_read_until_the_end_is_in_the_per_call_peak():
    x = np.random.default_rng(1).standard_normal((64, 256))

    def f(v):
        a = tn.reshape(v[:, 0:128], (64 * 128,))
        return tn.exp(v) * tn.sum(a), a * 2.0

    c = tn.compile(tn.trace(f, x))
    got = c.run([x])
    np.testing.assert_allclose(got[1], x[:, :128].reshape(-1) * 2.0, rtol=1e-12)
    real = _peak(lambda: c.run([x]))
    want = per_call_peak(c)
    assert abs(real - want) <= 0.05 * want, f"tracemalloc {real:,} B, per_call_peak {want:,} B"


@pytest.mark.parametrize("size", [CHUNK // 2, 5 * CHUNK + 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_update_temporary_is_what_subtract_scaled_allocates(size, dtype):
    data = np.ones(size, dtype)
    step = np.full(size, 0.5, dtype)
    real = _peak(lambda: subtract_scaled(data, step, 0.1))
    want = update_temp_bytes([data.nbytes], data.itemsize)
    slack = 4096  # the Python frames and objects of the call
    assert want - 64 <= real <= want + slack, f"tracemalloc {real:,} B, reported {want:,} B"
