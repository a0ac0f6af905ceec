"""The packed driver runs a large `a` in K blocks (packed_kernels._k_block, issue 19,
BENCHMARKS.md "h512c"), on either geometry: each block over every tile before the next, a later
block's chains continuing from out's floats (the microkernel's accumulate flag; through the
padded tile for a partial row block or a narrow last tile). The same bits as the driver's walk
over the whole K -- a row at a time, an `a` too small for K blocks -- (each element one FMA
chain over k in order), in any panel range, no other column written; and np.matmul within the
rounding bound."""

import numpy as np
import pytest
from test_packed_gemm import within_rounding
from test_packed_isa import each_range_equal

from tapernn.backends import numba_available, packed

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")

# (m, k, n): a of more than K_BLOCK_FROM bytes, K blocks >= K_BLOCK_MIN deep, the last one
# shorter; a partial row block (m % 4, m % 8), more than 2 row blocks (AVX-512's prefetch of the
# next tile) and a last tile of fewer than 3 vectors
BLOCKED = {np.float32: [(21, 4000, 77), (8, 9000, 48)], np.float64: [(9, 5000, 37), (19, 5000, 37)]}


@needs_numba
def test_k_block_only_for_a_large_a_with_deep_blocks():
    pk = packed._kernel_module("avx2")
    assert pk.K_BLOCK_FROM == 1 << 18 and pk.K_BLOCK_BYTES == 1 << 17 and pk.K_BLOCK_MIN == 256
    assert pk._k_block(16, 2048, 4) == 2048  # ((32, 50, 512) f32's reverse loop: 128 KiB)
    assert pk._k_block(64, 1024, 4) == 1024  # (256 KiB: not above K_BLOCK_FROM)
    assert pk._k_block(64, 4096, 4) == 512  # ((64, 100, 1024)'s reverse loop: 1 MiB)
    assert pk._k_block(32, 4096, 4) == 1024
    assert pk._k_block(9, 5000, 8) == 1808  # (131072 // 72 = 1820, a multiple of 16 below)
    assert pk._k_block(1600, 512, 4) == 512  # (blocks of 16 rows: too shallow, one block)
    assert pk._k_block(200, 2000, 4) == 2000  # (163 -> 160 < K_BLOCK_MIN)
    assert pk._k_block(5, 0, 4) == 1  # (k = 0: one block of no depth)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_depth_writes_zeros(dtype):
    """a (m, 0) @ (0, n): out all zeros (one K block of no depth), as before K blocks."""
    pk = packed._kernel_module("avx2")
    panels = packed.pack_panels(np.empty((0, 37), dtype), nr=packed.panel_width(dtype, "avx2"))
    out = np.full((6, 37), np.nan, dtype)
    pk._panels(np.empty((6, 0), dtype), panels, out, 0, panels.shape[0])
    np.testing.assert_array_equal(out, np.zeros((6, 37), dtype))


@needs_numba
@pytest.mark.parametrize("kind", sorted(packed.GEOMETRY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k_blocks_give_the_whole_k_walks_bits_in_any_panel_range(dtype, kind, rng):
    pk = packed._kernel_module(kind)
    nr = packed.panel_width(dtype, kind)
    for m, k, n in BLOCKED[dtype]:
        kc = pk._k_block(m, k, np.dtype(dtype).itemsize)
        assert 256 <= kc < k and k % kc, (m, k, kc)  # (blocked, the last block shorter)
        a = rng.standard_normal((m, k)).astype(dtype)
        w = rng.standard_normal((k, n)).astype(dtype)
        panels = packed.pack_panels(w, nr=nr)
        npan = panels.shape[0]
        whole = np.full((m, n), np.nan, dtype)
        for i in range(m):  # (a row at a time: the whole K at once)
            assert pk._k_block(1, k, np.dtype(dtype).itemsize) == k
            pk._panels(a[i : i + 1], panels, whole[i : i + 1], 0, npan)
        within_rounding(whole, a, w)
        each_range_equal(pk._panels, a, panels, whole)
        out = np.empty((m, n), dtype)
        pk.packed_matmul_serial(a, panels, out)  # (the serial driver: the same)
        np.testing.assert_array_equal(out, whole)
