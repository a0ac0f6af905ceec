"""The packed GEMM's memory side (issue 19, BENCHMARKS.md "hkern"): its panels on 64-byte
boundaries wherever tapernn makes them (a fresh pack, a parameter's `.grad`, a parameter block:
tapernn/aligned.py -- a 512-bit load of a vector straddled two cache lines, 5-20 %
slower), `a` packed by vector transposes (packed_kernels._transpose: the same array as the
element-wise copy), and the L1 prefetch of a tile's next rows, which reaches past the panels'
end: never a fault, the same bits."""

import ctypes
import mmap

import numpy as np
import pytest
from test_packed_gemm import within_rounding

from tapernn import aligned, nn
from tapernn.backends import numba_available, packed

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")
KINDS = sorted(packed.GEOMETRY)


def on_line(x):
    return x.ctypes.data % 64 == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize(
    "shape", [(0,), 7, (3, 5), (1024, 256), (2, 3, 70001), (np.int64(3), np.intp(5)), np.int32(9)]
)
def test_aligned_arrays_are_numpys_arrays_on_a_cache_line(shape, dtype):
    x = aligned.empty(shape, dtype)
    want = (shape,) if isinstance(shape, (int, np.integer)) else shape
    assert x.shape == want and x.dtype == dtype and x.flags.c_contiguous and x.flags.writeable
    assert x.size == 0 or on_line(x)
    if x.size:  # (views of it have it as their base, as np.empty's have: nn/packing's blocks)
        assert x[1:].base is x and x.reshape(-1).base is x
    z = aligned.zeros(shape, dtype)
    assert not z.any() and (z.size == 0 or on_line(z)) and z.dtype == dtype
    y = np.arange(z.size, dtype=np.int64).reshape(z.shape)  # (a copy to every dtype here)
    same = aligned.astype(z, dtype)
    assert same is z
    cast = aligned.astype(y, dtype)
    np.testing.assert_array_equal(cast, y.astype(dtype))
    assert cast.dtype == dtype and (cast.size == 0 or on_line(cast))
    like = aligned.zeros_like(y)
    assert like.dtype == y.dtype and like.shape == y.shape and not like.any()
    assert like.size == 0 or on_line(like)
    if y.ndim == 2:  # (another order: NumPy's own, its order kept, as zeros_like / astype)
        f = np.asfortranarray(y)
        assert aligned.zeros_like(f).flags.f_contiguous
        assert aligned.astype(f, dtype).flags.f_contiguous


def test_parameters_blocks_and_panels_start_on_a_cache_line(rng):
    """Fails before aligned.py: NumPy's large allocations start 16 bytes into a page."""
    lstm = nn.LSTM(96, 256).astype(np.float32)  # (parameter blocks)
    fast = nn.FastLSTM(256, 512).astype(np.float32)  # (parameters of their own, retyped)
    params = lstm.parameters() + fast.parameters()
    assert len(params) > 6
    for p in params:
        assert on_line(p.grad), (p.name, p.grad.ctypes.data % 64)
        assert p._block is None or (on_line(p._block.data) and on_line(p._block.grad))
    w = rng.standard_normal((300, 1000)).astype(np.float32)
    for nr in (16, 64):
        panels = packed.pack_panels(w, nr=nr)
        assert on_line(panels)
        np.testing.assert_array_equal(panels[0, :, :nr], w[:, :nr])


def guarded(nbytes: int):
    """A float array of `nbytes` ending where an inaccessible page starts (reading past its
    end faults) and its mmap."""
    page = mmap.PAGESIZE
    size = -(-nbytes // page) * page
    mm = mmap.mmap(-1, size + page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(base + size), page, 0) == 0  # (PROT_NONE)
    return np.frombuffer(mm, np.uint8, nbytes, size - nbytes), mm


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panels_at_an_inaccessible_page_and_off_the_line_give_the_same_bits(dtype, rng):
    """The microkernel prefetches its tile's rows NEAR ahead, past the panels' end in the last
    rows (a prefetch never faults: no bounds kept); panels off the cache line compute the same
    bits."""
    for kind in KINDS:
        pk = packed._kernel_module(kind)
        assert pk.NEAR == (8 if kind == "avx512" else 0)
        for m, k, n in [(16, 70, 200), (40, 33, 64), (5, 9, 130)]:
            a = rng.standard_normal((m, k)).astype(dtype)
            w = rng.standard_normal((k, n)).astype(dtype)
            want = packed.pack_panels(w, nr=pk.NV * pk.lanes(dtype))
            ref = np.empty((m, n), dtype)
            pk.packed_matmul_serial(a, want, ref)
            within_rounding(ref, a, w)
            raw, mm = guarded(want.nbytes)
            at_end = raw.view(dtype).reshape(want.shape)
            at_end[...] = want
            off = aligned.empty(want.nbytes + 16)[16:].view(dtype).reshape(want.shape)
            off[...] = want
            for panels in (at_end, off):
                out = np.full((m, n), np.nan, dtype)
                pk.packed_matmul_serial(a, panels, out)
                np.testing.assert_array_equal(out, ref)
            del at_end, raw
            mm.close()


def packed_a(a, mr):
    m, k = a.shape
    blocks = -(-m // mr)
    rows = np.zeros((blocks * mr, k), a.dtype)
    rows[:m] = a
    return rows.reshape(blocks, mr, k).transpose(0, 2, 1)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_packed_by_transposes_equals_the_element_wise_layout(dtype, rng):
    """_pack_a: whole row blocks in MR x lanes blocks of vector shuffles, the rest element-wise:
    the same array -- K not a multiple of the lanes, a partial row block (zero-padded), a
    strided `a` and one of rows in reverse -- for both geometries."""
    for kind in KINDS:
        pk = packed._kernel_module(kind)
        for m, k in [(1, 1), (3, 5), (8, 7), (8, 16), (13, 37), (16, 512), (24, 1000), (9, 0)]:
            a = rng.standard_normal((m, k)).astype(dtype)
            wide = rng.standard_normal((m, 2 * k + 1)).astype(dtype)[:, 1::2]
            for x in (a, wide, a[::-1]):
                np.testing.assert_array_equal(pk._pack_a(x), packed_a(x, pk.MR))
