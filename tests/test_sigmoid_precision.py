"""Sigmoid keeps relative accuracy in both tails, float32 and float64, in every lowering (the op,
the inline codegen forms, fused groups and fused kernels), with default passes and with none,
and so does its gradient where sigma(x) is small -- checked against a 40-digit Decimal
reference (no code shared with tapernn). Issue 15 item 4: the float32 tanh form returned 0
below x = -17, so Sigmoid -> BCECriterion had zero gradient on confidently wrong examples."""

from __future__ import annotations

from decimal import Decimal, localcontext

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

# relative error bounds (in units of the dtype's epsilon) for values that are normal numbers;
# below the smallest normal the error must stay below it (subnormals have fewer digits)
ULPS = 8
X = np.concatenate([np.linspace(-100.0, 100.0, 2001), [-19.5, -20.0, -17.0, -1e-3, 0.0, 1e-3]])
PASSES = {"default": None, "none": []}


def _decimal_sigmoid(x: float) -> tuple[Decimal, Decimal, Decimal]:
    """(sigma(x), sigma'(x), log sigma(x)) of the exact binary value x, to 40 digits."""
    with localcontext() as ctx:
        ctx.prec = 40
        e = (-Decimal(float(x))).exp()
        s = 1 / (1 + e)
        return s, s * (e * s), -(1 + e).ln()


def reference(x: np.ndarray):
    rows = [_decimal_sigmoid(v) for v in x.astype(np.float64)]
    return tuple(np.array([float(r[k]) for r in rows]) for k in range(3))


def assert_relative(got, ref, dtype, ulps=ULPS, what=""):
    info = np.finfo(dtype)
    got = np.asarray(got, np.float64)
    bound = ulps * info.eps * np.abs(ref) + info.tiny
    bad = np.abs(got - ref) > bound
    assert not bad.any(), (
        f"{what} {np.dtype(dtype)}: relative error up to "
        f"{np.max(np.abs(got - ref)[bad] / np.abs(ref[bad])):.3g} at indices "
        f"{np.flatnonzero(bad)[:5]} (got {got[bad][:3]}, want {ref[bad][:3]})"
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("passes", list(PASSES))
@pytest.mark.parametrize("form", ["alone", "fused", "tail_reader"])
def test_sigmoid_value_is_relatively_accurate(dtype, passes, form):
    """alone: the node by itself; fused: inside an elementwise group (default passes fuse it);
    tail_reader: read by a log (the codegen keeps an exact form for those)."""
    x = X.astype(dtype)
    exact = reference(x)[0]
    fn = {
        "alone": tn.sigmoid,
        "fused": lambda v: tn.sigmoid(v * 1.0) * 1.0,
        "tail_reader": lambda v: tn.sigmoid(v) + 0.0 * tn.log(tn.sigmoid(v)),
    }[form]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = tn.compile(tn.trace(fn, x), passes=PASSES[passes])(x)
    assert y.dtype == dtype
    assert_relative(
        y,
        exact,
        dtype,
        ulps=24 if form == "tail_reader" else ULPS,
        what=f"sigmoid {form} passes={passes}",
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reader", ["add", "log"])
def test_small_sigmoids_keep_both_tails(dtype, reader):
    """Values of at most EXACT_SIGMOID_INLINE_SIZE elements take the logaddexp form (four
    calls; relative error ~ |a| eps / 2 for |a| < 36: up to ~20 ulps in float64)."""
    from tapernn.fused_lowering import EXACT_SIGMOID_INLINE_SIZE

    n = EXACT_SIGMOID_INLINE_SIZE
    x = np.resize(X, (len(X) + n - 1) // n * n).reshape(-1, n).astype(dtype)
    exact = reference(x.ravel())[0].reshape(x.shape)

    def f(v):
        outs = [tn.sigmoid(v[j]) for j in range(x.shape[0])]
        if reader == "log":
            outs += [tn.log(s) for s in outs]
        return tn.stack(outs)

    compiled = tn.compile(tn.trace(f, x))
    assert "np_logaddexp" in compiled.source and "np_tanh" not in compiled.source
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = compiled(x)[: x.shape[0]]
    assert_relative(
        y.ravel(), exact.ravel(), dtype, ulps=24, what=f"small sigmoid read by {reader}"
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("passes", list(PASSES))
def test_log_sigmoid_is_finite_and_accurate(dtype, passes):
    x = X.astype(dtype)
    logs = reference(x)[2]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = tn.compile(tn.trace(lambda v: tn.log(tn.sigmoid(v)), x), passes=PASSES[passes])(x)
    normal = np.abs(logs) < -np.log(np.finfo(dtype).tiny)  # sigma(x) a normal number
    assert np.isfinite(got).all()
    np.testing.assert_allclose(
        got[normal], logs[normal], rtol=ULPS * np.finfo(dtype).eps, atol=ULPS * np.finfo(dtype).eps
    )
    # where sigma(x) is subnormal its digits run out: the log is still close
    np.testing.assert_allclose(got[~normal], logs[~normal], rtol=1e-2)
    if dtype == np.float32:
        assert got[list(X).index(-20.0)] == pytest.approx(-20.0, rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("passes", list(PASSES))
def test_sigmoid_gradient_keeps_the_negative_tail(dtype, passes):
    """d sigma/dx = sigma(1 - sigma): relative where sigma is small (x <= 0); where sigma is
    near 1 the 1 - sigma factor is known to an absolute eps (as in Torch7 and PyTorch)."""
    x = X.astype(dtype)
    _, slope, _ = reference(x)
    g = tn.grad(tn.trace(lambda v: tn.sum(tn.sigmoid(v)), x))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        _, dx = tn.compile(g, passes=PASSES[passes])(x)
    neg = X <= 0
    assert_relative(dx[neg], slope[neg], dtype, ulps=2 * ULPS, what="sigmoid gradient")
    np.testing.assert_allclose(
        dx[~neg], slope[~neg], rtol=2 * ULPS * np.finfo(dtype).eps, atol=2 * np.finfo(dtype).eps
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_in_a_fused_kernel(dtype):
    """A fused program met 16+ times on 4096+ elements becomes one function (codegen's
    _fused_kernel): its sigmoid lowering keeps the tails too."""
    from tapernn.regions import DEFAULT_OPTIONS

    k, size = DEFAULT_OPTIONS.kernel_min_uses, DEFAULT_OPTIONS.kernel_min_size
    row = np.resize(X, size).astype(dtype)
    x = np.tile(row, (k, 1))
    exact = reference(row)[0]
    compiled = tn.compile(
        tn.trace(lambda v: tn.stack([tn.sigmoid(v[j] * 1.0) * 1.0 for j in range(k)]), x),
        backend="numpy",
    )
    assert "fused_kernel" in compiled.source
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = compiled(x)
    for row in y:
        assert_relative(row, exact, dtype, what="fused kernel sigmoid")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nn_sigmoid_module_and_bce_gradient(dtype):
    """Sigmoid -> BCECriterion on confidently wrong examples: dL/dx = -(1 - s) s / (s + 1e-12)
    (Torch7's eps), about -1 at x = -20 (it was 0 in float32)."""
    x = X.astype(dtype)
    s_ref, slope, _ = reference(x)
    m = nn.Sigmoid()
    if dtype == np.float32:
        m.float()  # (a module computes in its own dtype, float64 unless told)
    y = m.forward(x)
    assert y.dtype == dtype
    assert_relative(y, s_ref, dtype, what="nn.Sigmoid")
    dx = m.backward(x, np.ones_like(x))
    neg = X <= 0
    assert_relative(dx[neg], slope[neg], dtype, ulps=2 * ULPS, what="nn.Sigmoid backward")
    logits = np.array([[-20.0], [-19.0], [-10.0]], dtype)
    crit = nn.BCECriterion(size_average=False).astype(dtype)  # criteria have their own dtype too
    m = nn.Sigmoid().astype(dtype)
    p = m.forward(logits)
    crit.forward(p, np.ones_like(logits))
    dl = m.backward(logits, crit.backward(p, np.ones_like(logits)))
    s = reference(logits.ravel())[0].reshape(logits.shape)
    want = -(1 - s) * s / (s + 1e-12)
    np.testing.assert_allclose(dl, want, rtol=1e-4)
    assert dl[0, 0] < -0.99


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_sigmoid_bce_bias_gradient_is_minus_one(dtype):
    """The issue's case: Linear -> Sigmoid -> BCECriterion with the logit at -20 and target 1;
    dL/db = -(1 - s) s / (s + 1e-12) = -0.9995 (PyTorch: -1). It was 0 in float32."""
    m = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid())
    if dtype == np.float32:
        m.float()
    m.get(0).weight.data[...] = 1.0
    m.get(0).bias.data[...] = 0.0
    x = np.array([[-20.0]], dtype)
    y = m.forward(x)
    crit = nn.BCECriterion().astype(dtype)
    crit.forward(y, np.ones_like(y))
    m.backward(x, crit.backward(y, np.ones_like(y)))
    s = float(reference(np.array([-20.0]))[0][0])
    want = -(1 - s) * s / (s + 1e-12)
    np.testing.assert_allclose(m.get(0).bias.grad, [want], rtol=1e-5)
