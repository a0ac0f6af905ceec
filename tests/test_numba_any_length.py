"""Any sequence length T without recompiling on the numba backend (issue 19, the README's promise
for rolled loops): a whole-program kernel's text has no sizes in it (program_source.lift_sizes
reads them from its `dims` argument), so a model run at T = 3, 5, 7, 2 compiles numba kernels
at its first T only -- counted at numba's Dispatcher.compile, cold, in a private kernel cache --
and every T's results equal the NumPy backend's (1e-12, float64), gradients too; with reverse
loops (BiSequencer) and with `remember`ed state carried across chunks of different T."""

import numpy as np
import pytest
from test_numba_program import WHOLE, forbid_numpy_programs

import tapernn as tn
from tapernn import nn
from tapernn.errors import TapernnError

numba = pytest.importorskip("numba")

D, H, B = 3, 4, 2
TOL = {"rtol": 1e-12, "atol": 1e-12}


@pytest.fixture
def cold(monkeypatch, tmp_path):
    """A private, empty kernel cache and empty kernel registries (every kernel this test needs
    is loaded and compiled anew), and the list of numba's compiles from now on: per outermost
    Dispatcher.compile that missed numba's disk cache, the kernel's module name."""
    from numba.core import dispatcher

    from tapernn.backends import numba_backend, numba_loop, numba_program

    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(numba_backend, "_kernels", {})
    monkeypatch.setattr(numba_loop, "_loops", {})
    monkeypatch.setattr(numba_program, "_programs", {})
    compiles: list[str] = []
    original, depth = dispatcher.Dispatcher.compile, [0]

    def counting(self, sig):
        if depth[0]:
            return original(self, sig)
        misses = sum(self._cache_misses.values())
        depth[0] += 1
        try:
            return original(self, sig)
        finally:
            depth[0] -= 1
            if sum(self._cache_misses.values()) > misses:
                compiles.append(self.py_func.__module__)

    monkeypatch.setattr(dispatcher.Dispatcher, "compile", counting)
    return compiles


def _twins(make):
    tn.manual_seed(11)
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    return a, b


def _step(seq, x, seed, backend):
    tn.set_backend(backend)
    try:
        seq.zero_grad_parameters()
        y = seq.forward(x)
        gx = seq.backward(x, seed)
    finally:
        tn.set_backend("numpy")
    return y.copy(), gx.copy(), [p.grad.copy() for p in seq.parameters()]


def _same(got, want, where):
    for k, (u, v) in enumerate(zip(got[:2], want[:2])):
        np.testing.assert_allclose(u, v, **TOL, err_msg=f"{where}: {('output', 'grad input')[k]}")
    for k, (u, v) in enumerate(zip(got[2], want[2])):
        np.testing.assert_allclose(u, v, **TOL, err_msg=f"{where}: parameter {k}")


def _programs(seq):
    pair = seq._runtime.last.training_pair
    assert [pair.forward.report.kernel, pair.backward.report.kernel] == [WHOLE] * 2
    return [pair.forward.program_kernel.handle, pair.backward.program_kernel.handle]


@pytest.mark.parametrize(
    ("make", "width"),
    [
        pytest.param(lambda: nn.Sequencer(nn.LSTM(D, H), unroll=False), H, id="lstm"),
        pytest.param(
            lambda: nn.BiSequencer(nn.FastLSTM(D, H), nn.FastLSTM(D, H)), 2 * H, id="bi-reverse"
        ),
    ],
)
def test_a_sweep_of_lengths_compiles_at_the_first_length_only(
    cold, make, width, tmp_path, monkeypatch
):
    seq, twin = _twins(make)
    rng = np.random.default_rng(4)
    data = {
        T: (rng.standard_normal((T, B, D)), rng.standard_normal((T, B, width)))
        for T in (3, 5, 7, 2)
    }
    want = {T: _step(twin, *data[T], "numpy") for T in data}
    forbid_numpy_programs(monkeypatch)  # (every program below runs as one kernel)
    compiled_at, shared, concrete, first_files = {}, set(), set(), None
    for T in (3, 5, 7, 2):
        before = len(cold)
        got = _step(seq, *data[T], "numba")
        compiled_at[T] = cold[before:]
        _same(got, want[T], f"T = {T}")
        handles = _programs(seq)
        shared |= {h.shared for h in handles}
        concrete |= {h.source for h in handles}  # (this T's numbers written in)
        files = {p.name for p in tmp_path.glob("*.py")}
        first_files = first_files or files
        assert files == first_files, f"T = {T} wrote kernel files of its own"
    assert compiled_at[3], "no compile counted at the first length: the count would not see one"
    assert [compiled_at[T] for T in (5, 7, 2)] == [[], [], []]
    assert len(shared) == 2  # one forward and one backward kernel for every T
    assert len(concrete) == 8  # ... each T's program its own numbers


def test_remembered_state_across_chunks_of_other_lengths(cold, monkeypatch):
    """A long sequence cut into chunks (the last one shorter), the state carried: chunks after
    the first run the carried-state programs, compiled for the first such chunk only."""
    seq, twin = _twins(lambda: nn.Sequencer(nn.FastLSTM(D, H), unroll=False))
    for s in (seq, twin):
        s.remember("both")
    rng = np.random.default_rng(6)
    chunks = [
        (rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))) for T in (4, 5, 3, 6, 2)
    ]
    want = [_step(twin, *chunk, "numpy") for chunk in chunks]
    forbid_numpy_programs(monkeypatch)
    counts = []
    for chunk, expected in zip(chunks, want):
        before = len(cold)
        _same(_step(seq, *chunk, "numba"), expected, f"chunk T = {len(chunk[0])}")
        _programs(seq)
        counts.append(len(cold) - before)
    assert counts[0] > 0 and counts[1] > 0  # (from zeros, then from the carried state)
    assert counts[2:] == [0, 0, 0]


def test_a_length_the_kernel_cannot_take_says_what_was_expected():
    """T = 0 is refused before any backend runs, on numba as on NumPy, with the same words."""
    said = []
    for backend in ("numpy", "numba"):
        seq = nn.Sequencer(nn.FastLSTM(D, H), unroll=False)
        tn.set_backend(backend)
        try:
            with pytest.raises(TapernnError, match="expects at least one step") as e:
                seq.forward(np.zeros((0, B, D)))
        finally:
            tn.set_backend("numpy")
        said.append(str(e.value))
    assert said[0] == said[1]


def test_the_kernel_reads_its_sizes_from_dims():
    """lift_sizes: every integer literal but 0 and 1 (and a workspace view's start, 0 too) is
    read from `dims`; the numbers come back in order; names and floats stay."""
    from tapernn.backends.program_source import lift_sizes

    body = [
        "    buf1 = c_view(work_float64, 0, (3, 20))",
        "    for i0 in range(3):",
        "        acc4 = buf1[i0, 1] * 2.5e-3 + out4[(70 + i0 * 1) % 20]",
    ]
    lifted, dims = lift_sizes(body)
    assert dims == [0, 3, 20, 3, 70, 20]
    assert lifted == [
        "    buf1 = c_view(work_float64, n0, (n1, n2))",
        "    for i0 in range(n3):",
        "        acc4 = buf1[i0, 1] * 2.5e-3 + out4[(n4 + i0 * 1) % n5]",
    ]
