"""The packed GEMM's panels packed by numba: of a transposed weight view (packed_kernels.pack_rows,
issue 19, BENCHMARKS.md "h256") and of a C weight (pack_cols, "h256c"): the same panels as
NumPy's copies -- float32 and float64, partial last panels, odd K, N below one panel --, used
only for those layouts once the packed kernel's dtype is compiled (a strided weight: NumPy's
copy), and a FastLSTM trained through them the same bit for bit as with NumPy's pack."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_available, packed

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
]


@pytest.fixture
def ready():
    for dt in (np.float32, np.float64):
        packed.handle().prepare(((np.dtype(dt).str,),))


def numpy_pack(w, nr=None):
    old = packed.TRANSPOSED_PACK[0], packed.COLUMN_PACK[0]
    packed.TRANSPOSED_PACK[0] = packed.COLUMN_PACK[0] = False
    try:
        return packed.pack_panels(w, nr=nr)
    finally:
        packed.TRANSPOSED_PACK[0], packed.COLUMN_PACK[0] = old


def counted(monkeypatch, name):
    """Calls of packed_kernels' `name` (pack_rows or pack_cols) from here on."""
    calls = []
    real = getattr(packed._kernel_module(), name)
    monkeypatch.setattr(packed._kernel_module(), name, lambda a, o: calls.append(1) or real(a, o))
    return calls


@pytest.mark.usefixtures("ready")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k", [(1024, 256), (130, 37), (5, 3), (64, 1), (200, 129)])
def test_pack_rows_equals_numpys_copy(dtype, n, k, rng, monkeypatch):
    w = rng.standard_normal((n, k)).astype(dtype)  # stored (N, K); packed: panels of w.T
    want = numpy_pack(w.T)
    calls = counted(monkeypatch, "pack_rows")
    out = np.full(want.shape, np.nan, dtype)
    got = packed.pack_panels(w.T, out)
    assert got is out and calls == [1]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(packed.pack_panels(w.T), want)  # (out made)
    for nr in (8, 24, 32):  # (any width: lanes x lanes blocks where it is a multiple of lanes)
        np.testing.assert_array_equal(
            packed.pack_panels(w.T, nr=nr), numpy_pack(w.T, nr), err_msg=f"nr {nr}"
        )
    assert len(calls) == 5
    # a C weight (not a transposed view: pack_cols), or a strided one: NumPy's copy
    calls.clear()
    np.testing.assert_array_equal(packed.pack_panels(np.ascontiguousarray(w.T)), want)
    wide = rng.standard_normal((n, 2 * k)).astype(dtype)[:, ::2]
    np.testing.assert_array_equal(packed.pack_panels(wide.T), numpy_pack(wide.T))
    assert calls == [] or k == 1  # (a (1, N) C array is its own transposed view too)


@pytest.mark.parametrize("kind", sorted(packed.GEOMETRY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_geometrys_pack_rows_equals_numpys_copy(kind, dtype, rng):
    """Each instruction set's pack_rows (its lanes x lanes transposes: 16 / 8 at 512 bits, 8 / 4
    at 256; AVX2's code runs on an AVX-512 CPU too) over full and partial panels, K tails and
    widths that are (not) a multiple of its lanes: NumPy's copy, bit for bit."""
    kernels = packed._kernel_module(kind)
    nr0 = packed.panel_width(dtype, kind)
    for n, k in [(256, 64), (130, 37), (5, 3), (200, 129)]:
        w = rng.standard_normal((n, k)).astype(dtype)
        for nr in (nr0, 8, 24):
            want = numpy_pack(w.T, nr)
            out = np.full(want.shape, np.nan, dtype)
            kernels.pack_rows(w, out)  # (w: the C weight whose transposed view is packed)
            np.testing.assert_array_equal(out, want, err_msg=f"{kind} {(n, k)} nr {nr}")


@pytest.mark.usefixtures("ready")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, n", [(1024, 256), (37, 130), (3, 5), (1, 64), (129, 200), (8, 17)])
def test_pack_cols_equals_numpys_copy(dtype, k, n, rng, monkeypatch):
    w = rng.standard_normal((k, n)).astype(dtype)  # a C weight (K, N)
    want = numpy_pack(w)
    calls = counted(monkeypatch, "pack_cols")
    out = np.full(want.shape, np.nan, dtype)  # (the padding columns too: written, zeros)
    got = packed.pack_panels(w, out)
    assert got is out and calls == [1]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(packed.pack_panels(w), want)  # (out made)
    for nr in (8, 24):  # (any width: its panels' out)
        np.testing.assert_array_equal(
            packed.pack_panels(w, nr=nr), numpy_pack(w, nr), err_msg=f"nr {nr}"
        )
    calls.clear()  # a strided weight, or a non-C out: NumPy's copy
    wide = rng.standard_normal((k, 2 * n)).astype(dtype)[:, ::2]
    np.testing.assert_array_equal(packed.pack_panels(wide), numpy_pack(wide))
    assert calls == []
    # rows apart (a C weight's column slice, scan_columns.pack's halves): pack_cols too
    rows = rng.standard_normal((2 * k, n)).astype(dtype)[::2]
    np.testing.assert_array_equal(packed.pack_panels(rows), numpy_pack(rows))
    assert calls == [1]
    calls.clear()  # an out of another shape: never given to numba (no bounds checks there)
    panels, _, nr = want.shape
    for shape in ((panels - 1, k, nr), (panels, k + 1, nr)):
        try:  # (NumPy's copy raises, or broadcasts a single row: k == 1)
            packed.pack_panels(w, np.zeros(shape, dtype))
        except (ValueError, IndexError):
            pass
    assert calls == []


@pytest.mark.usefixtures("ready")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, n", [(37, 130), (3, 40), (129, 200)])
def test_pack_cols_of_every_panel_range_of_a_c_weight(dtype, k, n, rng, monkeypatch):
    """Panels [first, last) packed from the column slice w[:, first*NR : last*NR] of a C weight
    (scan_columns.pack's halves) into out[first:last]: those panels bit for bit NumPy's whole
    pack's (the last one zero-padded), no other panel written."""
    w = rng.standard_normal((k, n)).astype(dtype)
    nr = packed.panel_width(dtype)
    want = numpy_pack(w)
    npan = want.shape[0]
    calls = counted(monkeypatch, "pack_cols")
    for first in range(npan):
        for last in range(first + 1, npan + 1):
            out = np.full(want.shape, np.nan, dtype)
            packed.pack_panels(w[:, first * nr : last * nr], out[first:last])
            np.testing.assert_array_equal(out[first:last], want[first:last])
            assert np.isnan(out[:first]).all() and np.isnan(out[last:]).all()
    assert len(calls) == npan * (npan + 1) // 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fastlstm_steps_the_same_with_either_pack(dtype, rng):
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        x = rng.standard_normal((6, 17, 8)).astype(dtype)
        g = rng.standard_normal((6, 17, 130)).astype(dtype)
        results = []
        for fast in (True, False):
            packed.TRANSPOSED_PACK[0] = packed.COLUMN_PACK[0] = fast
            tn.manual_seed(0)
            m = nn.Sequencer(nn.FastLSTM(8, 130)).astype(dtype)
            m.set_plan_options(tn.PlanOptions(layout="batch"))
            for _ in range(3):
                m.zero_grad_parameters()
                y = np.array(m.forward(x))
                gx = np.array(m.backward(x, g))
                for p in m.parameters():
                    p.data[...] += 0.01
            results.append((y, gx, [p.grad.copy() for p in m.parameters()]))
        (y1, gx1, p1), (y2, gx2, p2) = results
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(gx1, gx2)
        for a, b in zip(p1, p2):
            np.testing.assert_array_equal(a, b)
    finally:
        packed.TRANSPOSED_PACK[0] = packed.COLUMN_PACK[0] = True
        tn.set_backend(before)
