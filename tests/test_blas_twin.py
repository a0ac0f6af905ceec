"""The owned GEMM halves' own kernel (backends/own_gemm.py, blas_twin.py; issue 19, "hbig"):
own_gemm = NumPy's einsum (float64 1e-12, float32 at its precision) over ragged shapes, 1 row,
1 column, K = 1 and 0, transposed `a`, many K blocks; OpenBLAS's K blocks (k_depth); blas_twin.run
only where the bits are np.matmul's (its check refuses a wrong block depth), and an owned numba
model's training step through it the same bits as through OpenBLAS and the NumPy backend's to
1e-12. N blocks and the bias mode ("hnblk"): = einsum across N-block and row-chunk edges, run()
= np.matmul's bits and run_bias() = blas_gemm.gemm_bias's (OpenBLAS beta = 1) where b needs N
blocks, and an owned model through both the same bits as through OpenBLAS. Cost: own_gemm's 4
signatures and the models' kernels, ~27 s CPU on a cold kernel cache (~5 s warm)."""

import ctypes

import numpy as np
import pytest

import tapernn as tn
from tapernn import aligned, blas, blas_gemm, nn, own_threads
from tapernn.backends import blas_twin, numba_available
from tapernn.blas import limiter

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (packed.isa() "avx512": the kernel runs on AVX2 too)
]


@pytest.fixture(scope="module")
def gemm():
    """own_gemm's compiled kernel (compiled at once: no background worker)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    import numba  # noqa: F401 -- (blas_twin runs only where numba is imported)

    kernels = [blas_twin._HANDLE.take(dt) for dt in ("float32", "float64")]
    mp.undo()
    assert None not in kernels, blas_twin._HANDLE.error
    return blas_twin._HANDLE.module


def own(mod, a, b, q=None, unroll=blas_twin.UNROLL, nt=1 << 20, bias=None):
    """own_gemm's out = a @ b (+ bias), b's panels in N blocks of nt tiles (default: one)."""
    m, k = a.shape
    n = b.shape[1]
    q = q or blas_twin.Q[a.itemsize]
    out = np.full((m, n), np.nan, a.dtype)
    assert mod.fits(a, b, out)
    work = aligned.empty(mod.work_size(m, k, n, a.itemsize, q, nt), a.dtype)
    mod.gemm(a, b, out, work, q, unroll, nt, np.empty(0, a.dtype) if bias is None else bias)
    return out


def operands(rng, m, k, n, dtype, transposed):
    a = rng.standard_normal((k, m) if transposed else (m, k)).astype(dtype)
    return (a.T if transposed else a), rng.standard_normal((k, n)).astype(dtype)


SHAPES = [(1, 1, 1), (1, 40, 70), (9, 1, 100), (3, 0, 5), (70, 33, 1), (8, 16, 48)]
SHAPES += [(17, 33, 70), (67, 901, 70), (130, 300, 256), (64, 1000, 96)]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_own_gemm_equals_einsum(gemm, dtype, transposed, rng):
    """Every shape at OpenBLAS's block depth, and at depth 16 (blocks of 8: many later blocks
    added through the tile, where most shapes have one)."""
    for m, k, n in SHAPES:
        a, b = operands(rng, m, k, n, dtype, transposed)
        ref = np.einsum("ik,kj->ij", a.astype(np.float64), b.astype(np.float64))
        scale = max(np.abs(ref).max(initial=0.0), 1.0) * max(k, 1)
        tol = 1e-15 if dtype == np.float64 else 1e-7
        for q, unroll in ((None, blas_twin.UNROLL), (16, 8)):
            got = own(gemm, a, b, q, unroll)
            assert got.dtype == dtype
            np.testing.assert_allclose(got, ref, rtol=0, atol=tol * scale, err_msg=(m, k, n, q))


def test_k_depth_is_openblas_blocking(gemm):
    """OpenBLAS's driver/level3.c: GEMM_Q, but all below 2 Q, in two halves above Q (the first
    rounded up to GEMM_UNROLL_M)."""

    def blocks(k, q, unroll):
        out, k0 = [], 0
        while k0 < k:
            out.append(gemm.k_depth(k - k0, q, unroll))
            k0 += out[-1]
        return out

    assert blocks(1600, 448, 16) == [448, 448, 352, 352]
    assert blocks(1024, 448, 16) == [448, 288, 288]
    assert blocks(500, 448, 16) == [256, 244]
    assert blocks(448, 448, 16) == [448]
    assert blocks(897, 448, 16) == [448, 224, 225]
    assert blocks(770, 384, 16) == [384, 208, 178]


def _openblas_cores() -> set:
    """The kernel sets ("SkylakeX", ...) of the OpenBLAS libraries loaded here, by their own
    get_corename (threadpoolctl, which says the same, is not a test dependency)."""
    cores = set()
    for path in blas.openblas_paths():
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "openblas_get_corename64_"):
            if hasattr(lib, name):
                fn = getattr(lib, name)
                fn.restype = ctypes.c_char_p
                cores.add(fn().decode())
                break
    return cores


def test_run_gives_matmul_bits_or_declines(gemm, rng, monkeypatch):
    """run() writes only np.matmul's bits: where its check says so, the pool at one thread (as
    in an owned call); at two threads it declines, and a wrong block depth (Q 100: K 300 in 3
    blocks, OpenBLAS's 1) fails the check and leaves the GEMM to np.matmul."""
    arch = _openblas_cores()
    with limiter.limit(1):
        for dtype in (np.float32, np.float64):
            for m, k, n, transposed in ((96, 300, 64, False), (64, 600, 100, True)):
                a, b = operands(rng, m, k, n, dtype, transposed)
                out = np.full((m, n), np.nan, dtype)
                ran = blas_twin.run(a, b, out)
                key = (np.dtype(dtype).str, m, k, n, transposed, False, False)
                assert ran == blas_twin._checked[key]
                if arch == {"SkylakeX"}:  # (OpenBLAS 0.3.31's Q and unroll: this kernel's)
                    assert ran, key
                if ran:
                    assert np.array_equal(out, np.matmul(a, b)), key
    with limiter.limit(2):
        out = np.full((64, 100), np.nan)
        assert not blas_twin.run(*operands(rng, 64, 600, 100, np.float64, True), out)
        assert np.isnan(out).all()
    _wrong_depth_declines(rng, monkeypatch, None)


def _wrong_depth_declines(rng, monkeypatch, bias):
    """Q 100 (K 300 in 3 blocks, OpenBLAS's 1): run (bias None) or run_bias fails its check,
    writes nothing (the caller runs OpenBLAS) and remembers the shape as not the same."""
    monkeypatch.setattr(blas_twin, "Q", {4: 100, 8: 100})
    monkeypatch.setattr(blas_twin, "_checked", {})
    a, b = operands(rng, 80, 300, 64, np.float64, False)
    out = np.full((80, 64), np.nan)
    with limiter.limit(1):
        assert not (
            blas_twin.run_bias(a, b, bias, out) if bias is not None else blas_twin.run(a, b, out)
        )
    assert np.isnan(out).all()
    assert blas_twin._checked == {("<f8", 80, 300, 64, False, False, bias is not None): False}


def test_run_declines_what_it_does_not_fit(gemm, rng):
    """Small GEMMs, neither operand C, b's rows and columns strided, mixed dtypes, out
    overlapping an operand: False, out untouched."""
    a, b = operands(rng, 96, 128, 64, np.float64, False)
    cases = [
        (a[:32], b, np.empty((32, 64))),  # (fewer than MIN_ROWS rows)
        (np.asfortranarray(a), np.asfortranarray(b), np.empty((96, 64))),  # (neither C)
        (a, rng.standard_normal((128, 192))[:, ::2], np.empty((96, 96))),
        (a.astype(np.float32), b, np.empty((96, 64))),
        (a, b, np.empty((96, 64), np.float32)),
    ]
    with limiter.limit(1):
        for x, y, out in cases:
            out.fill(np.nan)
            assert not blas_twin.run(x, y, out)
            assert np.isnan(out).all()
        both = np.zeros((96, 128))
        assert not blas_twin.run(both, np.zeros((128, 128)), both[:, :128])


def test_owned_model_same_bits_as_openblas(gemm, rng, monkeypatch):
    """An owned FastLSTM training step on the numba backend (T 8, batch 16, H 128, float64: its
    dW and dX halves through run()) = the same step with blas_twin off, bit for bit, and the
    NumPy backend's to 1e-12."""
    ran = blas_twin.RAN[0]
    _same_step_three_ways(rng, monkeypatch, 8, 16)
    assert blas_twin.RAN[0] > ran  # (the path ran)


def test_owned_model_n_blocks_and_bias_same_bits(gemm, rng, monkeypatch):
    """The same at T 16, batch 32 (the projection's row halves (256, 128) x (128, 512) + bias of
    blas_gemm.MIN_BYTES: through run_bias) with 64 KiB N blocks (every GEMM of the step in
    several): twin on = off bit for bit, = NumPy to 1e-12."""
    monkeypatch.setattr(blas_twin, "PANEL_BYTES", 1 << 16)
    ran, biased = blas_twin.RAN[0], blas_twin.RAN_BIAS[0]
    _same_step_three_ways(rng, monkeypatch, 16, 32)
    assert (
        blas_twin.RAN_BIAS[0] > biased and blas_twin.RAN[0] - ran > blas_twin.RAN_BIAS[0] - biased
    )


def _same_step_three_ways(rng, monkeypatch, t, batch):
    """An owned FastLSTM(128, 128) training step (T t, batch `batch`, float64), numba with
    blas_twin on = off bit for bit = the NumPy backend to 1e-12."""
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    before = tn.get_backend()
    x = rng.standard_normal((t, batch, 128))
    g = rng.standard_normal((t, batch, 128))

    def step(backend, twin):
        monkeypatch.setattr(blas_twin, "ENABLED", [twin])
        tn.set_backend(backend)
        tn.manual_seed(0)
        m = nn.Sequencer(nn.FastLSTM(128, 128))
        m.set_plan_options(tn.PlanOptions(layout="batch", batch_split="on", own_threads="on"))
        for _ in range(2):  # (the second: every kernel in place)
            m.zero_grad_parameters()
            y = np.array(m.forward(x))
            gx = np.array(m.backward(x, g))
        return [y, gx] + [p.grad.copy() for p in m.parameters()]

    try:
        twin = step("numba", True)
        assert own_threads.SPLIT_GEMMS[0] > 0
        blas = step("numba", False)
        numpy = step("numpy", False)
    finally:
        tn.set_backend(before)
        tn.set_blas_threads("auto")
    for u, v, w in zip(twin, blas, numpy):
        assert np.array_equal(u, v)
        np.testing.assert_allclose(u, w, rtol=1e-12, atol=1e-12)


def test_scratch_is_private_to_a_forked_child():
    """The work buffers are anonymous mappings: private, so a forked child (distributed
    workers) running the kernel writes its own copy, not its parent's scratch."""
    import os

    work = blas_twin._outside(1000, np.dtype(np.float64))
    work[:] = 1.0
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        work[:] = 2.0
        os._exit(0)
    os.waitpid(pid, 0)
    assert (work == 1.0).all()


# (f32: 16 lanes, tiles of 3 vectors but the last 2 or 4 vectors as 2-vector tiles; f64: 8 lanes)
N_SHAPES = [(17, 33, 160), (9, 50, 161), (67, 901, 200), (130, 300, 70), (8, 1, 47)]
N_SHAPES += [(1100, 40, 100), (3, 0, 50), (64, 500, 384)]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_n_blocks_equal_einsum(gemm, dtype, transposed, rng):
    """own_gemm in N blocks of 1, 2 and 3 tiles (edges inside the last 2-vector tiles; 1100 rows:
    two row chunks), with and without a bias, b C or a transposed view (its panels transposed
    in lanes x lanes blocks and ragged edges), at OpenBLAS's depth and at depth 16 = einsum (+
    the bias)."""
    assert gemm.ROWS < 1100
    for m, k, n in N_SHAPES:
        a, b = operands(rng, m, k, n, dtype, transposed)
        bias = rng.standard_normal(n).astype(dtype)
        ref = np.einsum("ik,kj->ij", a.astype(np.float64), b.astype(np.float64))
        scale = max(np.abs(ref).max(initial=0.0) + np.abs(bias).max(), 1.0) * (k + 1)
        tol = (1e-15 if dtype == np.float64 else 1e-7) * scale
        # (b's rows or columns contiguous; not both operands transposed: blas_twin declines that)
        layouts = (b,) if transposed else (b, np.asfortranarray(b))
        for nt in (1, 2, 3):
            for q, unroll in ((None, blas_twin.UNROLL), (16, 8)):
                for bb in layouts:
                    what = (m, k, n, nt, q, bb.flags.f_contiguous)
                    got = own(gemm, a, bb, q, unroll, nt)
                    np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=what)
                    got = own(gemm, a, bb, q, unroll, nt, bias)
                    np.testing.assert_allclose(got, ref + bias, rtol=0, atol=tol, err_msg=what)


def test_block_tiles_spreads_the_tiles(gemm):
    """N blocks by b's bytes (the K block's rows x n columns), the tiles spread evenly."""
    assert gemm.block_tiles(256, 1024, 4, 448, 1 << 20) == 22  # (256 x 1024 x 4 B: one block)
    assert gemm.block_tiles(512, 2048, 4, 448, 1 << 20) == 11  # (3.5 MiB: 4 blocks, 43 tiles)
    assert gemm.block_tiles(300, 600, 8, 384, 1 << 20) == 13  # (2 blocks of 25 tiles)
    assert gemm.block_tiles(1, 48, 4, 448, 1) == 1


# (m, k, n, a transposed, b transposed): b's K block over blas_twin.PANEL_BYTES (N blocks) at each
BLOCKED = {np.float32: [(256, 512, 1200, False, False), (128, 600, 1000, True, False)]}
BLOCKED[np.float32] += [(200, 256, 1100, False, True)]  # (the projection's x @ W.T)
BLOCKED[np.float64] = [(96, 300, 600, False, False), (72, 700, 640, True, False)]
BLOCKED[np.float64] += [(64, 256, 720, False, True)]


def test_run_n_blocks_gives_openblas_bits(gemm, rng):
    """run() = np.matmul and run_bias() = blas_gemm.gemm_bias (the bias copied into out, OpenBLAS
    beta = 1), bit for bit, where b needs N blocks, b C or transposed (running where OpenBLAS is
    SkylakeX's); the
    bias result not np.matmul + np.add's at some shape (a different rounding: a real check), and
    within rounding of a @ b + bias."""
    skylakex = _openblas_cores() == {"SkylakeX"}
    some_differ = False
    with limiter.limit(1):
        for dtype, shapes in BLOCKED.items():
            for m, k, n, transposed, b_transposed in shapes:
                q = blas_twin.Q[np.dtype(dtype).itemsize]
                assert min(k, q) * n * np.dtype(dtype).itemsize > blas_twin.PANEL_BYTES
                a, b = operands(rng, m, k, n, dtype, transposed)
                b = np.asfortranarray(b) if b_transposed else b
                bias = rng.standard_normal(n).astype(dtype)
                out, out_b, ref_b = (np.full((m, n), np.nan, dtype) for _ in range(3))
                ran, biased = blas_twin.run(a, b, out), blas_twin.run_bias(a, b, bias, out_b)
                assert (ran and biased) or not skylakex, (m, k, n)
                assert blas_gemm.gemm_bias(a, b, bias, ref_b)
                if ran:
                    assert np.array_equal(out, np.matmul(a, b))
                if biased:
                    assert np.array_equal(out_b, ref_b)
                    some_differ |= not np.array_equal(out_b, np.matmul(a, b) + bias)
                    exact = a.astype(np.float64) @ b.astype(np.float64) + bias
                    tol = (1e-15 if dtype == np.float64 else 1e-7) * np.abs(exact).max() * k
                    np.testing.assert_allclose(out_b, exact, rtol=0, atol=tol)
    assert some_differ or not skylakex


def test_run_bias_declines_where_gemm_bias_would_not(gemm, rng, monkeypatch):
    """run_bias: False and out untouched for a 2-D bias, a strided bias, a bias inside out, two
    BLAS threads, more than BLOCKED_ROWS rows needing N blocks, and a wrong block depth (its own
    check against gemm_bias fails)."""
    a, b = operands(rng, 96, 128, 256, np.float64, False)
    bias = rng.standard_normal(512)
    out = np.full((96, 256), np.nan)
    with limiter.limit(1):
        assert not blas_twin.run_bias(a, b, bias[:256].reshape(1, 256), out)
        assert not blas_twin.run_bias(a, b, bias[::2], out)
        assert not blas_twin.run_bias(a, b, out[0], out)
        tall = operands(rng, blas_twin.BLOCKED_ROWS + 8, 64, 4200, np.float32, False)
        wide = np.full((blas_twin.BLOCKED_ROWS + 8, 4200), np.nan, np.float32)
        assert not blas_twin.run(*tall, wide)
        assert not blas_twin.run_bias(*tall, np.zeros(4200, np.float32), wide)
        assert np.isnan(wide).all()
    with limiter.limit(2):
        assert not blas_twin.run_bias(a, b, bias[:256], out)
    assert np.isnan(out).all()
    _wrong_depth_declines(rng, monkeypatch, bias[:64].copy())
