"""QA round hqa24: what a user met around stop 45's GEMMs -- the projection's bias under
OpenBLAS's beta = 1 (blas_gemm), the owned halves' own kernel (blas_twin) and the split's worker
-- and around parameters rebound or sharing a `.grad` (each test fails on the code before its
fix). Cost: three numba FastLSTM(256) plans and own_gemm's kernel (warm kernel cache: ~15 s
on 2 workers at load 12)."""

import warnings

import numpy as np
import pytest

import tapernn as tn
from tapernn import blas_gemm, nn, own_threads
from tapernn.backends import blas_twin, numba_missing, packed

NUMBA = pytest.mark.skipif(bool(numba_missing()), reason="no numba")


def nan_making_input(shape, rng, dtype=np.float64):
    """Random input whose rows 0 of the first and last step hold +inf and -inf: their products
    with a weight row pair of one sign are inf - inf, NumPy's "invalid value"."""
    x = rng.standard_normal(shape).astype(dtype)
    for t in (0, -1):
        x[t, 0, 0], x[t, 0, 1] = np.inf, -np.inf
    return x


def run_quietly_and_raising(m, x):
    """(the forward's output with no NumPy warning escaping, the error the same forward raises
    under np.errstate(invalid="raise"))"""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (any warning -- from any thread -- fails the call)
        y = np.array(m.forward(x))
    with np.errstate(invalid="raise"), pytest.raises(tn.TapernnError) as e:
        m.forward(x)
    return y, e.value


def test_errstate_raise_still_raises_where_the_bias_is_under_beta_one():
    # README: "a `with np.errstate(invalid="raise")` of yours still raises, naming the failing
    # op"; the projection's GEMM onto its bias (blas_gemm.gemm_bias, from MIN_BYTES of output:
    # here (64, 1024) float64 on the NumPy backend, fused by own_bias.fuse_unowned) went through
    # ctypes, whose float flags NumPy never checks: the NaN went on silently
    rng = np.random.default_rng(0)
    x = nan_making_input((8, 8, 256), rng)
    m = nn.Sequencer(nn.FastLSTM(256, 256))
    m.set_plan_options(tn.PlanOptions(backend="numpy"))
    calls = blas_gemm.CALLS[0]
    y, error = run_quietly_and_raising(m, x)
    assert "matmul" in str(error) and "invalid value" in str(error)
    assert np.isnan(y[:, 0]).any() and np.isfinite(y[:, 1:]).all()
    np.testing.assert_array_equal(np.array(m.forward(x)), y)  # (no errstate: the BLAS again)
    assert blas_gemm.CALLS[0] > calls  # (the beta = 1 path ran where nothing asked to raise)


def test_the_blas_paths_decline_under_a_users_errstate(rng):
    a, b, bias = rng.standard_normal((300, 64)), rng.standard_normal((64, 512)), np.ones(512)
    out = np.full((300, 512), 7.0)
    for state in ({"invalid": "raise"}, {"over": "print"}, {"all": "raise", "under": "ignore"}):
        with np.errstate(**state):
            assert not blas_gemm.gemm_bias(a, b, bias, out)
            assert blas_gemm.call(a, b, out) is None
    assert (out == 7.0).all()  # (untouched: the caller's np.matmul runs)
    with np.errstate(all="warn"):  # (NumPy's default: a program turns its warnings off)
        assert blas_gemm.gemm_bias(a, b, bias, out)
    np.testing.assert_allclose(out, np.einsum("ik,kj->ij", a, b) + 1.0, rtol=1e-12, atol=1e-12)


def test_the_splits_worker_runs_in_the_callers_numpy_error_state():
    # the owned halves' worker thread ran in NumPy's default state ("warn"): inside a program
    # (warnings off, the user's "raise" kept) its half of a GEMM warned or did not raise
    with np.errstate(invalid="raise", over="ignore"):
        state = own_threads.submit(np.geterr).result()
    assert state["invalid"] == "raise" and state["over"] == "ignore"
    with np.errstate(all="ignore"):
        assert own_threads.submit(np.geterr).result()["invalid"] == "ignore"


@NUMBA
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_owned_numba_step_warns_nothing_and_raises_under_errstate(dtype, monkeypatch):
    # the owned split's halves: the forward projection under beta = 1 (blas_gemm), the
    # backward's dW / dX through blas_twin's kernel or np.matmul on the worker thread
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    rng = np.random.default_rng(2)
    x = nan_making_input((8, 16, 256), rng, dtype)
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(256, 256))
    m = m.float() if dtype == np.float32 else m
    opts = tn.PlanOptions(backend="numba", layout="batch", batch_split="on", own_threads="on")
    m.set_plan_options(opts)
    split = own_threads.SPLIT_GEMMS[0]
    y, error = run_quietly_and_raising(m, x)
    assert own_threads.SPLIT_GEMMS[0] > split
    assert "invalid value" in str(error)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(np.array(m.forward(x)), y)  # (the raising call undone)
        gx = np.array(m.backward(x, np.ones_like(y)))
    assert np.isnan(gx).any()  # (the NaN reached the backward's GEMMs on both threads)
    tn.manual_seed(0)
    ref = nn.Sequencer(nn.FastLSTM(256, 256))
    ref = ref.float() if dtype == np.float32 else ref
    ref.set_plan_options(tn.PlanOptions(backend="numpy"))
    want = np.array(ref.forward(x))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(y[np.isfinite(want)], want[np.isfinite(want)], rtol=tol, atol=tol)


@NUMBA
def test_the_twin_declines_under_a_users_errstate(rng, monkeypatch, packed_now):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")  # (the kernel compiled at once)
    import numba  # noqa: F401 -- (blas_twin runs only where numba is imported)

    from tapernn.blas import limiter

    a, b = rng.standard_normal((128, 256)), rng.standard_normal((256, 96))
    a[0, :2] = np.inf, -np.inf
    out = np.full((128, 96), 7.0)
    with limiter.limit(1):  # (as in an owned call)
        with np.errstate(invalid="raise"):
            assert not blas_twin.run(a, b, out)
        assert (out == 7.0).all()  # (untouched: the caller's np.matmul runs, and raises)
        with np.errstate(all="ignore"):
            ran = blas_twin.run(a, b, out)
            want = a @ b
    assert ran == blas_twin._checked[("<f8", 128, 256, 96, False, False, False)], (
        blas_twin._HANDLE.error
    )
    if ran:  # (where the kernel gives OpenBLAS's bits: SkylakeX)
        np.testing.assert_array_equal(out, want)


def _owned_fastlstm(shape: tuple, seed: int) -> tuple:
    """An input of `shape` (T, B, 256) f32, an owned numba FastLSTM(256, 256) Sequencer, and its
    training step(x) -> [output, grad input, each parameter's grad]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(256, 256)).float()
    opts = tn.PlanOptions(backend="numba", layout="batch", batch_split="on", own_threads="on")
    m.set_plan_options(opts)

    def step(x):
        m.zero_grad_parameters()
        return [np.array(m.forward(x)), np.array(m.backward(x, g))] + [
            p.grad.copy() for p in m.parameters()
        ]

    return x, m, step


@NUMBA
def test_a_read_only_input_through_the_twins_kernel(monkeypatch):
    # the dW GEMM's b is the (read-only) input: blas_twin handed it to its kernel, compiled for
    # writeable arrays only, and the step raised "matmul failed: No matching definition for
    # argument type(s) ... readonly array(float32, 2d, C)" (np.matmul takes it)
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    x, _, step = _owned_fastlstm((8, 16, 256), seed=3)
    frozen = x.copy()
    frozen.setflags(write=False)
    ran = blas_twin.RAN[0]
    for want, got in zip(step(x), step(frozen)):
        np.testing.assert_array_equal(got, want)
    assert blas_twin.RAN[0] > ran or packed.isa() != "avx512"  # (the kernel ran for x)


@pytest.mark.parametrize("field", ["data", "grad"])
def test_a_byte_swapped_rebind_says_so(field):
    # the refusal read "is float64; cannot rebind its .data to a float64 array"
    p = nn.Linear(3, 2).weight
    swapped = getattr(p, field).astype(">f8")
    with pytest.raises(tn.DTypeError, match="to a byte-swapped float64 array"):
        setattr(p, field, swapped)
    setattr(p, field, swapped.astype(np.float64))  # (the message's remedy)
    assert getattr(p, field).dtype == np.float64


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=NUMBA)])
def test_parameters_sharing_one_grad_array_accumulate_both(backend):
    # Torch7's weight sharing shares gradWeight too: each backward adds into the one array.
    # The backward computed each gradient into its zeroed .grad (Packing.compute_into: zero
    # plus the gradient), both checked before either ran -- the second overwrote the first
    rng = np.random.default_rng(4)
    x, g = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    m = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    m.set_plan_options(tn.PlanOptions(backend=backend, grad_into_min_bytes=1))  # (any size)
    (w1, b1), (w2, b2) = (m.get(k).parameters() for k in (0, 1))
    shared_w, shared_b = np.zeros((6, 6)), np.zeros(6)
    w1.grad = w2.grad = shared_w
    b1.grad = b2.grad = shared_b
    for call in range(3):
        m.zero_grad_parameters()
        y = m.forward(x)
        m.backward(x, g)
        h = x @ w1.data.T + b1.data  # (NumPy's equations)
        np.testing.assert_allclose(y, h @ w2.data.T + b2.data, rtol=1e-12, atol=1e-12)
        dh = g @ w2.data
        want_w, want_b = g.T @ h + dh.T @ x, g.sum(0) + dh.sum(0)
        np.testing.assert_allclose(shared_w, want_w, rtol=1e-12, atol=1e-12, err_msg=f"{call}")
        np.testing.assert_allclose(shared_b, want_b, rtol=1e-12, atol=1e-12, err_msg=f"{call}")


@NUMBA
def test_read_only_parameters_through_the_twins_bias_kernel(monkeypatch):
    # the projection's bias reaches blas_twin.run_bias (hnblk): its kernel, too, takes writeable
    # arrays only -- a read-only bias goes to OpenBLAS's beta = 1, with the same numbers
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    x, m, step = _owned_fastlstm((50, 32, 256), seed=4)
    ran = blas_twin.RAN_BIAS[0]
    want = step(x)
    assert blas_twin.RAN_BIAS[0] > ran or packed.isa() != "avx512"  # (the projection halves)
    ran = blas_twin.RAN_BIAS[0]
    for p in m.parameters():
        if p.data.ndim != 1:  # (the bias alone: read-only weights decline before it)
            continue
        frozen = p.data.copy()
        frozen.setflags(write=False)
        p.data = frozen
    for w, got in zip(want, step(x)):
        np.testing.assert_array_equal(got, w)
    assert blas_twin.RAN_BIAS[0] == ran  # (declined: OpenBLAS's beta = 1 took the bias)
