"""The BLAS's own GEMM with beta (blas_gemm.py, issue 19 "hblas"): `gemm` against the NumPy
equations (no BLAS: a broadcast product summed in float64) for every operand layout it takes,
the arguments it must refuse leaving C untouched, `gemm_bias` (the bias prefilled, beta = 1),
own_threads.matmul_bias's halves through it (row and column splits), and an owned FastLSTM
model whose projection takes it, against the reference interpreter's equations (float64,
1e-12) -- and the same results with no library found."""

import numpy as np
import pytest
from test_batch_split import CELLS, D, T, check_equations, train
from test_own_bias import model, needs_numba, numba_now, run_owned  # noqa: F401 (fixture)
from test_rolled_small import numpy_backend  # noqa: F401 (fixture)

import tapernn as tn
from tapernn import blas_gemm, nn, own_bias, own_threads

needs_blas = pytest.mark.skipif(not blas_gemm.functions(), reason="no ILP64 OpenBLAS cblas GEMM")


def product(a, b):
    """a @ b in float64 without the BLAS (a broadcast product, summed)."""
    return (a.astype(np.float64)[:, :, None] * b.astype(np.float64)[None, :, :]).sum(axis=1)


def shaped(rng, rows, cols, dtype, kind):
    """A (rows, cols) operand: C order, a transposed C array, or either with padded rows."""
    if kind == "c":
        return rng.standard_normal((rows, cols)).astype(dtype)
    if kind == "t":
        return rng.standard_normal((cols, rows)).astype(dtype).T
    if kind == "c_padded":
        return rng.standard_normal((rows, cols + 3)).astype(dtype)[:, 1 : cols + 1]
    return rng.standard_normal((cols, rows + 5)).astype(dtype)[:, 2 : rows + 2].T  # t_padded


TOL = {np.float64: {"rtol": 1e-12, "atol": 1e-12}, np.float32: {"rtol": 1e-5, "atol": 1e-5}}
KINDS = ["c", "t", "c_padded", "t_padded"]


@needs_blas
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m, k, n", [(7, 5, 9), (1, 6, 4), (5, 1, 3), (6, 4, 1), (33, 70, 18)])
@pytest.mark.parametrize("ka", KINDS)
@pytest.mark.parametrize("kb", KINDS)
def test_gemm_equals_the_equations_for_every_layout(dtype, m, k, n, ka, kb, rng):
    a, b = shaped(rng, m, k, dtype, ka), shaped(rng, k, n, dtype, kb)
    c = shaped(rng, m, n, dtype, "c_padded")
    c0 = c.astype(np.float64)
    before = blas_gemm.CALLS[0]
    assert blas_gemm.gemm(a, b, c, beta=0.5, alpha=-2.0)
    assert blas_gemm.CALLS[0] == before + 1
    np.testing.assert_allclose(c, -2.0 * product(a, b) + 0.5 * c0, **TOL[dtype])
    assert blas_gemm.gemm(a, b, c, beta=0.0)  # (beta = 0: C's old values, NaN too, unread)
    c[...] = np.nan
    assert blas_gemm.gemm(a, b, c, beta=0.0)
    np.testing.assert_allclose(c, product(a, b), **TOL[dtype])


class Sub(np.ndarray):
    pass


def refused_cases(rng):
    """(name, a, b, c) the GEMM must leave to np.matmul."""
    f = lambda *s, dt=np.float64: rng.standard_normal(s).astype(dt)
    base = f(8, 6)
    shared = f(12, 6)
    readonly = f(8, 5)
    readonly.flags.writeable = False
    raw = np.zeros(8 * 5 * 8 + 1, np.uint8)[1:].view(np.float64).reshape(8, 5)  # unaligned
    return [
        ("int dtype", f(8, 6).astype(np.int64), f(6, 5).astype(np.int64), np.zeros((8, 5), int)),
        ("mixed dtypes", f(8, 6), f(6, 5, dt=np.float32), f(8, 5)),
        ("float16", f(8, 6, dt=np.float16), f(6, 5, dt=np.float16), f(8, 5, dt=np.float16)),
        ("big-endian", f(8, 6).astype(">f8"), f(6, 5).astype(">f8"), f(8, 5).astype(">f8")),
        ("3-D", f(2, 8, 6), f(2, 6, 5), f(2, 8, 5)),
        ("shapes", f(8, 6), f(7, 5), f(8, 5)),
        ("out shape", f(8, 6), f(6, 5), f(8, 4)),
        ("empty", f(8, 0), f(0, 5), f(8, 5)),
        ("negative stride", f(8, 6)[::-1], f(6, 5), f(8, 5)),
        ("every other column", f(8, 12)[:, ::2], f(6, 5), f(8, 5)),
        ("c transposed", f(8, 6), f(6, 5), f(5, 8).T),
        ("c overlaps a", shared[:8], f(6, 6), shared[4:12]),
        ("c is b", f(6, 6), base[:6], base[:6]),
        ("c read-only", f(8, 6), f(6, 5), readonly),
        ("c unaligned", f(8, 6), f(6, 5), raw),
        ("a list", f(8, 6).tolist(), f(6, 5), f(8, 5)),
        ("a subclass", f(8, 6).view(Sub), f(6, 5), f(8, 5)),
    ]


@needs_blas
def test_gemm_refuses_what_it_does_not_handle_and_leaves_c_alone(rng):
    for name, a, b, c in refused_cases(rng):
        was = np.array(c, copy=True)
        assert not blas_gemm.gemm(a, b, c, beta=0.0), name
        np.testing.assert_array_equal(c, was, err_msg=name)
        bias = np.ones(c.shape[-1], getattr(c, "dtype", np.float64))
        assert not blas_gemm.gemm_bias(a, b, bias, c), name
        np.testing.assert_array_equal(c, was, err_msg=name)


@needs_blas
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_bias_adds_the_row_onto_the_product(dtype, rng):
    a, b = shaped(rng, 40, 300, dtype, "c"), shaped(rng, 300, 24, dtype, "t")
    bias = rng.standard_normal(24).astype(dtype)
    out = np.full((40, 24), np.nan, dtype)
    assert blas_gemm.gemm_bias(a, b, bias, out)
    np.testing.assert_allclose(out, product(a, b) + bias, **TOL[dtype])
    # a bias that is (part of) the output or an operand, or of the wrong length, dtype or rank
    store = np.zeros((41, 24), dtype)
    for bad, o in [
        (store[1], store[1:]),  # (a row of the output)
        (b[0], out),  # (a row of b's storage)
        (bias[:23], out),
        (bias.astype(np.float16), out),
        (bias[None], out),
    ]:
        was = o.copy()
        assert not blas_gemm.gemm_bias(a, b, bad, o)
        np.testing.assert_array_equal(o, was)
    rows = rng.standard_normal(24 * 5).astype(dtype)  # (a bias inside a's own storage)
    a2 = rows.reshape(5, 24)
    assert not blas_gemm.gemm_bias(a2, rng.standard_normal((24, 24)).astype(dtype), rows[:24], out)


def test_gemm_returns_false_without_a_library(monkeypatch, rng):
    monkeypatch.setattr(blas_gemm, "_found", {})
    a, b, c = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), np.zeros((4, 2))
    assert not blas_gemm.gemm(a, b, c) and not blas_gemm.gemm_bias(a, b, np.ones(2), c)
    assert not c.any()


def test_layout_reads_the_strides():
    x = np.zeros((6, 10))
    assert blas_gemm.layout(x) == (blas_gemm.NO_TRANS, 10)
    assert blas_gemm.layout(x[:, 2:7]) == (blas_gemm.NO_TRANS, 10)
    assert blas_gemm.layout(x.T) == (blas_gemm.TRANS, 10)
    assert blas_gemm.layout(x[:, 1:5].T) == (blas_gemm.TRANS, 10)
    assert blas_gemm.layout(x[:1]) == (blas_gemm.NO_TRANS, 10)  # (one row: ld = its length)
    assert blas_gemm.layout(x[:, :1]) == (blas_gemm.NO_TRANS, 10)
    assert blas_gemm.layout(x[::2]) == (blas_gemm.NO_TRANS, 20)
    for bad in (x[:, ::2], x[::-1], x[:, ::-1], np.zeros((6, 10, 2))[:, :, 0]):
        assert blas_gemm.layout(bad) is None


@needs_blas
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m, k, n", [(37, 300, 8), (6, 300, 41), (40, 1, 6)])
def test_owned_matmul_bias_halves_take_the_blas_path(dtype, m, k, n, rng, monkeypatch):
    monkeypatch.setattr(own_threads, "MIN_FLOPS", 0.0)
    monkeypatch.setattr(blas_gemm, "MIN_BYTES", 0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T  # (the projection's x @ W^T)
    bias = rng.standard_normal(n).astype(dtype)
    before = blas_gemm.CALLS[0]
    out = np.full((m, n), np.nan, dtype)
    assert run_owned(lambda: own_threads.matmul_bias(a, b, bias, (m, 1, n), out=out)) is out
    np.testing.assert_allclose(out, product(a, b) + bias, **TOL[dtype])
    # both halves (rows of a, or columns of b) through the BLAS; K = 1 keeps its own rule
    assert blas_gemm.CALLS[0] - before == (0 if k == 1 else 2)


@needs_blas
@needs_numba
@pytest.mark.usefixtures("numba_now")
@pytest.mark.parametrize("found", [True, False])
def test_an_owned_fastlstm_with_the_blas_projection_equals_the_equations(found, rng, monkeypatch):
    monkeypatch.setattr(blas_gemm, "MIN_BYTES", 0)
    if not found:
        monkeypatch.setattr(blas_gemm, "_found", {})
    make, step, n, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 7, D)), rng.standard_normal((T, 7, H))
    m = model(make, True)
    before = blas_gemm.CALLS[0]
    for _ in range(2):
        got = train(m, x, g)
    assert "np_matmul_bias(" in m._runtime.last.training_pair.forward.program.source
    assert own_bias.FUSED[0] > 0
    assert (blas_gemm.CALLS[0] > before) == found
    check_equations(m, step, n, x, g, got, rng)


def test_unowned_matmul_bias_runs_the_whole_gemm_onto_its_bias(rng, monkeypatch):
    a, b = rng.standard_normal((30, 300)), rng.standard_normal((20, 300)).T
    bias = rng.standard_normal(20)
    monkeypatch.setattr(blas_gemm, "MIN_BYTES", 0)
    before = blas_gemm.CALLS[0]
    out = np.full((30, 20), np.nan)
    assert own_threads.matmul_bias(a, b, bias[None, None], (30, 1, 20), out=out) is out
    assert blas_gemm.CALLS[0] == before + 1
    np.testing.assert_allclose(out, product(a, b) + bias, **TOL[np.float64])
    # K = 1 keeps its own rule (tests/test_own_outer.py): np.matmul's bits, signed zeros too
    a1, w1 = rng.standard_normal((40, 1)), rng.standard_normal((6, 1))
    a1[::3], w1[::2], bias[::2] = -0.0, 0.0, -0.0
    want = np.matmul(a1, w1.T) + bias[:6]
    got = own_threads.matmul_bias(a1, w1.T, bias[:6], (40, 6), out=np.empty((40, 6)))
    assert blas_gemm.CALLS[0] == before + 1
    np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))


@needs_blas
@pytest.mark.usefixtures("numpy_backend")
@pytest.mark.parametrize("min_bytes", [0, 1 << 62])
def test_a_numpy_backend_fastlstm_fuses_its_big_projection_alone(min_bytes, rng, monkeypatch):
    monkeypatch.setattr(blas_gemm, "MIN_BYTES", min_bytes)  # (read at compile and at calls)
    make, step, n, H = CELLS["fastlstm"]
    tn.manual_seed(0)
    m = nn.Sequencer(make())
    x, g = rng.standard_normal((T, 6, D)), rng.standard_normal((T, 6, H))
    before = blas_gemm.CALLS[0]
    for _ in range(2):
        got = train(m, x, g)
    pair = m._runtime.last.training_pair
    assert ("np_matmul_bias(" in pair.forward.program.source) == (min_bytes == 0)
    assert "np_matmul_sum(" not in pair.last_backward.program.source  # (an owned call's halves)
    assert (blas_gemm.CALLS[0] > before) == (min_bytes == 0)
    check_equations(m, step, n, x, g, got, rng)
