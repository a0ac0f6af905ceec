"""The numba backend's elementwise kernels at sizes where a step's loop runs in Python (issue 19,
helem): a rolled FastLSTM's forward body is BLAS plus numba kernels with no NumPy ufunc chain
left (the lone gate sigmoids and tanh are one-instruction kernels); kernels over strided views
(C-contiguous rows, or not) and broadcast operands equal the NumPy backend; FastLSTM on numba ==
the NumPy backend == NumPy equations, float64 to 1e-12, float32 within its tolerance."""

import re

import numpy as np
import pytest
from cell_reference import fastlstm_step, run

import tapernn as tn
from tapernn import nn, scan_run
from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")

# ufuncs of the NumPy lowering of an elementwise group (a sigmoid is five of them)
UFUNCS = ("exp", "tanh", "negative", "minimum", "divide", "logaddexp", "add", "mul", "subtract")


def _body_sources(monkeypatch):
    sources = []
    make = scan_run.make_runner

    def recording(compiled, attrs, **kw):
        sources.append(compiled.program.source)
        return make(compiled, attrs, **kw)

    monkeypatch.setattr(scan_run, "make_runner", recording)
    return sources


def _on(backend, fn):
    before = tn.get_backend()
    tn.set_backend(backend)
    try:
        return fn()
    finally:
        tn.set_backend(before)


def test_rolled_fastlstm_forward_body_is_blas_and_numba_kernels(monkeypatch):
    sources = _body_sources(monkeypatch)
    B, H = 32, 256
    seq = nn.Sequencer(nn.FastLSTM(H, H), unroll=False).astype(np.float32)
    # batch-major pinned: the layout rule times both at this shape (layout_rule), and the
    # feature-major body's gate blocks are rows, not columns (a kernel per gate)
    seq.set_plan_options(tn.PlanOptions(layout="batch"))
    x = np.random.default_rng(0).standard_normal((3, B, H)).astype(np.float32)
    _on("numba", lambda: seq.forward(x))
    body = sources[0].split("\n\n")[0]  # the forward body (the program, not its helpers)
    calls = re.findall(r"\b(np_\w+|nks\d+)\(", body)
    kernels = [c for c in calls if c.startswith("nks")]
    ufuncs = [c for c in calls if c[3:] in UFUNCS]
    # the bias/projection add after the recurrent GEMM is the one ufunc left; the sigmoid over
    # the i/f/o gates, the sigmoid, tanh, the cell update and o * tanh(c) are numba kernels
    assert ufuncs == ["np_add"], body
    assert len(kernels) == 5, body
    # the recurrent GEMM: OpenBLAS, or on AVX-512 the packed kernel (scan_pack)
    assert "np_matmul" in calls or re.search(r"\bpacked_gemm\w*\(", body), body


def _fastlstm_step(backend, dtype, unroll, B, H, D=16, T=4):
    tn.manual_seed(3)
    cell = nn.FastLSTM(D, H)
    seq = nn.Sequencer(cell, unroll=unroll).astype(dtype)
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((T, B, D)).astype(dtype)
    seed = rng.standard_normal((T, B, H)).astype(dtype)

    def step():
        out = seq.forward(xs)
        seq.zero_grad_parameters()
        gx = seq.backward(xs, seed)
        return out, gx, {k: p.grad.copy() for k, p in cell.named_parameters().items()}

    got = _on(backend, step)
    params = {k: p.data.astype(np.float64) for k, p in cell.named_parameters().items()}
    return got, (xs, params)


@pytest.mark.parametrize("unroll", [False, True])
def test_fastlstm_numba_equals_numpy_and_equations_float64(unroll):
    # B * 4H = 5120 values per step: above numba_loop's whole-loop limit, so the rolled loop
    # runs in Python over the fused and lone kernels (3H * B, H * B >= NUMBA_LONE_MIN_SIZE)
    (out, gx, grads), (xs, params) = _fastlstm_step("numba", np.float64, unroll, 20, 64)
    (out_np, gx_np, grads_np), _ = _fastlstm_step("numpy", np.float64, unroll, 20, 64)
    expected, _ = run(fastlstm_step, params, xs, 2, 64)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out, out_np, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gx, gx_np, rtol=1e-12, atol=1e-13)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_np[name], rtol=1e-12, atol=1e-12)


def test_fastlstm_numba_float32_within_tolerance():
    (out, gx, grads), (xs, params) = _fastlstm_step("numba", np.float32, False, 20, 64)
    (out_np, gx_np, grads_np), _ = _fastlstm_step("numpy", np.float32, False, 20, 64)
    expected, _ = run(fastlstm_step, params, xs.astype(np.float64), 2, 64)
    assert out.dtype == gx.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, out_np, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, gx_np, rtol=1e-4, atol=1e-5)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_np[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_over_strided_and_broadcast_operands(dtype):
    rng = np.random.default_rng(5)
    base = rng.uniform(-30, 30, (40, 96)).astype(dtype)
    b = rng.standard_normal((1, 32)).astype(dtype)
    col = rng.standard_normal((40, 1)).astype(dtype)
    views = {
        "rows contiguous": base[:, 32:64],
        "inner stride 2": base[:, ::3],
        "transposed": np.ascontiguousarray(base[:32, :40]).T,
        "contiguous": np.ascontiguousarray(base[:, :32]),
    }

    def f(a, b, col):
        return tn.sigmoid(a) * b + tn.tanh(a) * col + tn.exp(a * 0.1)

    for label, a in views.items():
        got = _on("numba", lambda a=a: tn.compile(tn.trace(f, a, b, col))(a, b, col))
        ref = _on("numpy", lambda a=a: tn.compile(tn.trace(f, a, b, col))(a, b, col))
        tol = 1e-12 if dtype == np.float64 else 2e-6
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=label)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_in_place_kernel_variant_is_right_whether_or_not_out_aliases(dtype):
    from tapernn.backends import numba_backend

    S = (8, 16)
    program = (
        ("mul", (0, 1), (), S, dtype),
        ("sigmoid", (-1,), (), S, dtype),
        ("sub", (2, 0), (), S, dtype),
        ("mul", (-2, -3), (), S, dtype),
    )
    operands = [(S, dtype), ((1, 16), dtype), ((), dtype)]
    handle, why = numba_backend.plan_kernel(program, operands, S, dtype, inplace=0)
    assert handle is not None, why
    assert "r0[i1] = v3" in handle.source  # the row loop stores through x0's row view
    kernel = handle.prepare(warm=True)
    rng = np.random.default_rng(6)
    base = rng.standard_normal((8, 40)).astype(dtype)
    b, c = rng.standard_normal((1, 16)).astype(dtype), np.array(0.5, dtype)

    def want(x):
        return 1 / (1 + np.exp(-(x * b))) * (c - x)

    tol = 1e-12 if dtype == np.float64 else 1e-6
    cuts = (lambda a: a[:, 4:20].copy(), lambda a: a[:, 4:20], lambda a: a[:, ::2][:, :16])
    for cut in cuts:
        x = cut(base)
        expected = want(x)
        np.testing.assert_allclose(kernel(x, b, c, np.empty(S, dtype)), expected, rtol=tol)
        y = x.copy()
        kernel(y, b, c, y)  # out is operand 0: the in-place row loop
        np.testing.assert_allclose(y, expected, rtol=tol)
        z = cut(base.copy())
        kernel(z, b, c, np.empty(S, dtype))  # out not operand 0 despite the variant
        np.testing.assert_allclose(z, x, rtol=0)  # operand untouched


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lone_op_sites_in_the_background_first_call_numpy_then_kernel(dtype, monkeypatch):
    from tapernn.backends import background, numba_backend

    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    monkeypatch.setattr(numba_backend, "_kernels", {})  # not compiled in this process yet
    x = np.random.default_rng(7).uniform(-40, 40, (32, 48)).astype(dtype)
    fn = (lambda a: [tn.sigmoid(a), a * 2.0]) if dtype == np.float64 else tn.tanh
    g = tn.trace(fn, x)
    c = tn.compile(g, backend="numba")
    sites = {k: v for k, v in c.program.fn.__kwdefaults__.items() if k.startswith("nks")}
    assert sites and all(isinstance(v, background.Site) for v in sites.values())
    first = c(x)
    reference = tn.compile(g, backend="numpy")(x)
    for got, want in zip(first, reference):
        np.testing.assert_array_equal(got, want)  # the NumPy lowering ran, bit for bit
    second = c(x)
    assert not any(
        isinstance(v, background.Site)
        for k, v in c.program.fn.__kwdefaults__.items()
        if k.startswith("nks")
    )
    tol = 1e-12 if dtype == np.float64 else 2e-7
    for got, want in zip(second, reference):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_a_2d_kernel_is_compiled_once_for_every_layout_and_write_flag():
    """One specialisation per 2-D kernel: it reads rows through c_row whatever the layout, so
    contiguous, strided (numba's "A") and read-only operands share the compile (each was one
    more cold compile, ~0.5 s); results right for each, and an exact-layout compile never runs
    (numba's dispatcher converts to the one signature)."""
    from tapernn.backends import background, numba_backend

    S, dtype = (6, 8), np.float32
    program = (("tanh", (0,), (), S, dtype), ("mul", (-1, 1), (), S, dtype))
    handle, why = numba_backend.plan_kernel(program, [(S, dtype), (S, dtype)], S, dtype)
    assert handle is not None, why
    rng = np.random.default_rng(9)
    base = rng.standard_normal((6, 24)).astype(dtype)
    frozen = base[:, 8:16].copy()
    frozen.flags.writeable = False
    cases = [
        (np.ascontiguousarray(base[:, :8]), base[:, 8:16].copy()),
        (base[:, :8], base[:, 8:16]),  # strided rows ("A")
        (base[:, ::3], frozen),  # inner stride 3, read-only
    ]
    for x, y in cases:
        out = np.empty(S, dtype)
        key = background.type_key((x, y, out))
        kernel = handle.prepare(key)
        assert handle.has(key)
        np.testing.assert_allclose(kernel(x, y, out), np.tanh(x) * y, rtol=2e-6, atol=1e-7)
    assert len(handle.kernel.signatures) == 1
