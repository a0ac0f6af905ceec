"""The owned GEMM halves' own kernel (backends/own_gemm.py, blas_twin.py; issue 19, "hbig"):
own_gemm = NumPy's einsum (float64 1e-12, float32 at its precision) over ragged shapes, 1 row,
1 column, K = 1 and 0, transposed `a`, many K blocks; OpenBLAS's K blocks (k_depth); blas_twin.run
only where the bits are np.matmul's (its check refuses a wrong block depth), and an owned numba
model's training step through it the same bits as through OpenBLAS and the NumPy backend's to
1e-12. Cost: own_gemm's 4 signatures and the model's kernels, ~27 s CPU on a cold kernel cache
(~3 s warm)."""

import ctypes

import numpy as np
import pytest

import tapernn as tn
from tapernn import aligned, blas, nn, own_threads
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

    kernel = blas_twin._HANDLE.take()
    mp.undo()
    assert kernel is not None, blas_twin._HANDLE.error
    return blas_twin._HANDLE.module


def own(mod, a, b, q=None, unroll=blas_twin.UNROLL):
    m, k = a.shape
    n = b.shape[1]
    q = q or blas_twin.Q[a.itemsize]
    out = np.full((m, n), np.nan, a.dtype)
    assert mod.fits(a, b, out)
    work = aligned.empty(mod.work_size(m, k, n, a.itemsize, q), a.dtype)
    mod.gemm(a, b, out, work, q, unroll)
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
                key = (np.dtype(dtype).str, m, k, n, transposed)
                assert ran == blas_twin._checked[key]
                if arch == {"SkylakeX"}:  # (OpenBLAS 0.3.31's Q and unroll: this kernel's)
                    assert ran, key
                if ran:
                    assert np.array_equal(out, np.matmul(a, b)), key
    with limiter.limit(2):
        out = np.full((64, 100), np.nan)
        assert not blas_twin.run(*operands(rng, 64, 600, 100, np.float64, True), out)
        assert np.isnan(out).all()
    monkeypatch.setattr(blas_twin, "Q", {4: 100, 8: 100})
    monkeypatch.setattr(blas_twin, "_checked", {})
    a, b = operands(rng, 80, 300, 64, np.float64, False)
    out = np.full((80, 64), np.nan)
    with limiter.limit(1):
        assert not blas_twin.run(a, b, out)
    assert np.isnan(out).all()  # (nothing written: the caller runs np.matmul)
    assert blas_twin._checked == {("<f8", 80, 300, 64, False): False}


def test_run_declines_what_it_does_not_fit(gemm, rng):
    """Small GEMMs, b not C, mixed dtypes, out overlapping an operand: False, out untouched."""
    a, b = operands(rng, 96, 128, 64, np.float64, False)
    cases = [
        (a[:32], b, np.empty((32, 64))),  # (fewer than MIN_ROWS rows)
        (a, np.asfortranarray(b), np.empty((96, 64))),
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
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    before = tn.get_backend()
    x = rng.standard_normal((8, 16, 128))
    g = rng.standard_normal((8, 16, 128))

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
        ran = blas_twin.RAN[0]
        twin = step("numba", True)
        assert blas_twin.RAN[0] > ran  # (the path ran)
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
