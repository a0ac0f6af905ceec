"""Owned GEMMs of small K (own_threads, branch hgemm): a GEMM with >= MIN_OUT_BYTES of output
splits in two halves whatever its flops (a FastLSTM(1, H) projection), and a K = 1 projection's
halves are np.multiply's outer product plus the bias -- the same bits as np.matmul's and the bias
add after it, signed zeros too; a small one is not split; a FastLSTM(1, H) model owned = unowned
= its NumPy equations (float64, 1e-12)."""

import numpy as np
import pytest
from test_batch_split import TOL, T, check_equations, fastlstm_step, train

import tapernn as tn
from tapernn import nn, own_threads
from tapernn.backends import numba_available


def owned(fn, monkeypatch):
    """fn() as inside an owned call (own_threads' split paths on), counting the split GEMMs."""
    before = own_threads.SPLIT_GEMMS[0]
    monkeypatch.setattr(own_threads._state, "depth", 1)
    try:
        got = fn()
    finally:
        monkeypatch.setattr(own_threads._state, "depth", 0)
    return got, own_threads.SPLIT_GEMMS[0] - before


def bits(a):
    return a.view(np.int32 if a.dtype == np.float32 else np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k1_projection_splits_with_the_same_bits(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    m, n = 1600, 1024  # (>= MIN_OUT_BYTES, < MIN_FLOPS: split by its output alone)
    assert 2.0 * m * n < own_threads.MIN_FLOPS
    assert m * n * np.dtype(dtype).itemsize >= own_threads.MIN_OUT_BYTES
    a = rng.standard_normal((m, 1)).astype(dtype)
    w = rng.standard_normal((n, 1)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    a[::7] = 0.0
    a[3::7] = -0.0
    w[::5] = -0.0
    w[1::5] = 0.0
    bias[::3] = -0.0
    bias[1::3] = 0.0
    b = w.T  # (the projection's W.T: an F-ordered view)
    want = np.matmul(a, b)
    want += bias
    out = np.full((m, n), np.nan, dtype)
    got, splits = owned(lambda: own_threads.matmul_bias(a, b, bias, (m, n), out=out), monkeypatch)
    assert got is out and splits == 1
    np.testing.assert_array_equal(bits(got), bits(want))
    assert np.signbit(want).any() and (want == 0).any()  # (the signed zeros were there)
    # the plain GEMM too: split, np.matmul's own bits
    got, splits = owned(lambda: own_threads.matmul(a, b), monkeypatch)
    assert splits == 1
    np.testing.assert_array_equal(bits(got), bits(np.matmul(a, b)))


def test_small_gemm_of_small_k_is_not_split(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((64, 1)), rng.standard_normal((1, 64))
    got, splits = owned(lambda: own_threads.matmul(a, b), monkeypatch)
    assert splits == 0
    np.testing.assert_allclose(got, a * b, **TOL)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.usefixtures("packed_on")
def test_fastlstm_of_one_input_owned_equals_unowned_and_numpy_equations(rng, monkeypatch):
    """Every time-batched GEMM split by its output size alone (the thresholds moved so that the
    small test shapes take that path): the K = 1 projection's halves in the forward."""
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    monkeypatch.setattr(own_threads, "MIN_FLOPS", float("inf"))
    monkeypatch.setattr(own_threads, "MIN_OUT_BYTES", 0)
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        ms = []
        for own in ("on", "off"):
            tn.manual_seed(0)
            m = nn.Sequencer(nn.FastLSTM(1, 130))
            split = "off" if own == "off" else "on"
            m.set_plan_options(tn.PlanOptions(layout="batch", batch_split=split, own_threads=own))
            ms.append(m)
        x, g = rng.standard_normal((T, 8, 1)), rng.standard_normal((T, 8, 130))
        for _ in range(2):  # (call 1 runs the full loop, then the kernels split it)
            want = train(ms[1], x, g)
            got, splits = train(ms[0], x, g), own_threads.SPLIT_GEMMS[0]
        got = train(ms[0], x, g)
        assert own_threads.SPLIT_GEMMS[0] > splits
        for u, v in zip(got[:2], want[:2]):
            np.testing.assert_allclose(u, v, **TOL)
        for k in want[2]:
            np.testing.assert_allclose(got[2][k], want[2][k], **TOL, err_msg=k)
        check_equations(ms[0], fastlstm_step, 2, x, g, got, rng)
    finally:
        tn.set_backend(before)
        tn.set_blas_threads("auto")
