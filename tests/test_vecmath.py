"""The numba backend's float32 exp, tanh and sigmoid (tapernn/backends/vecmath.py): against
float64 NumPy rounded to float32 over a dense grid (every float32 magnitude from subnormals to
the largest, the saturation and underflow regions), signed zeros, NaN and +-Inf; and the
generated loops are vectorised float32 code with no libm call left."""

import re

import numpy as np
import pytest
from conftest import optimised_subprocess

import tapernn as tn
from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


def _host_fma():
    try:
        from llvmlite import binding

        return bool(binding.get_host_cpu_features().get("fma"))
    except ImportError:  # (no llvmlite: the module's tests skip)
        return False


_HOST_FMA = _host_fma()


def _ulps(a, b):
    ia, ib = (v.view(np.int32).astype(np.int64) for v in (a, b))
    ia, ib = (np.where(i < 0, -(i & 0x7FFFFFFF), i) for i in (ia, ib))
    return np.abs(ia - ib)


def _grid():
    f32 = np.float32
    dense = np.linspace(-12, 12, 1_000_001, dtype=f32)
    wide = np.linspace(-110, 95, 400_001, dtype=f32)  # exp's overflow / subnormal / 0 edges
    magnitudes = np.logspace(-45.5, 38.5, 400_000).astype(f32)
    special = np.array(
        [
            0.0,
            1e-45,
            1.2e-38,
            3e-4,
            0.625,
            9.0,
            9.01,
            9.75,
            10.0,
            87.3,
            88.72,
            88.7229,
            88.73,
            103.9,
            103.98,
            104.0,
            3.4e38,
        ],
        f32,
    )
    x = np.concatenate([dense, wide, magnitudes, special])
    return np.concatenate([x, -x, np.array([np.inf, -np.inf, np.nan], f32)])


def _run(fn, x):
    c = tn.compile(tn.trace(lambda a: fn(a) * 1.0, x), backend="numba")
    assert c.report.compiled_kernels == 1 and not c.report.fallbacks  # lowered, not on NumPy
    got = c(x)
    assert got.dtype == np.float32
    return got


def _sigmoid64(x):
    x = x.astype(np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


@pytest.mark.parametrize(
    "name, fn, ref, max_ulps, off",
    [
        ("exp", tn.exp, np.exp, 1, 0.1),  # NumPy's own float32 exp: up to 2 ulps
        ("tanh", tn.tanh, np.tanh, 1, 0.02),  # NumPy's own: up to 1 ulp
        ("sigmoid", tn.sigmoid, _sigmoid64, 2, 0.3),  # the NumPy lowering's: up to 2 ulps
    ],
)
def test_float32_function_against_float64_rounded(name, fn, ref, max_ulps, off):
    x = _grid()
    got = _run(fn, x)
    with np.errstate(over="ignore"):
        want = ref(x.astype(np.float64)).astype(np.float32)
    finite = np.isfinite(x) & np.isfinite(want)
    ulps = _ulps(got[finite], want[finite])
    assert ulps.max() <= max_ulps, (name, x[finite][ulps.argmax()])
    assert (ulps > 0).mean() < off  # mostly correctly rounded
    np.testing.assert_array_equal(got[~finite], want[~finite])  # Inf, overflow, +-1, 0, NaN
    zeros = x == 0
    np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(want[zeros]))  # -0
    if name == "tanh":
        tiny = (np.abs(x) < 1e-4) & np.isfinite(x)
        np.testing.assert_array_equal(got[tiny], x[tiny])  # tanh(x) = x to float32 precision
    if name == "exp":  # subnormal results round once: within 1 unit of the smallest subnormal
        sub = (want > 0) & (want < np.finfo(np.float32).tiny)
        assert sub.sum() > 1000 and _ulps(got[sub], want[sub]).max() <= 1


def test_sigmoid_tails_keep_relative_precision():
    x = np.array([-103.0, -90.0, -88.0, -40.0, -17.0, 17.0, 40.0], np.float32)
    got = _run(tn.sigmoid, x)
    want = _sigmoid64(x).astype(np.float32)
    assert np.all(got[:5] > 0)  # no underflow to 0 above the smallest subnormal
    assert _ulps(got, want).max() <= 2


def test_float32_loops_are_vectorised_without_libm_calls(tmp_path, monkeypatch, request):
    if optimised_subprocess(request):  # (the suite's kernels are -O0: conftest)
        return
    from tapernn.backends import numba_backend

    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))  # compiled here: inspectable
    monkeypatch.setattr(numba_backend, "_kernels", {})
    x = np.linspace(-3, 3, 64, dtype=np.float32)
    c = tn.compile(
        tn.trace(lambda a: tn.tanh(a) * 2.0 + tn.sigmoid(a * 3.0) + tn.exp(a), x),
        backend="numba",
    )
    c(x)  # compiled at the first call, for the types it passes
    kernel = next(v for k, v in c.program.fn.__kwdefaults__.items() if k.startswith("nk"))
    asm = "\n".join(kernel.inspect_asm().values())
    # packed single arithmetic, 8 wide (AVX2) or 16 wide (AVX-512): SIMD, whichever the CPU has
    assert re.search(r"\bvmulps\s+.*%[yz]mm", asm)
    # exp's 2^n: a packed round (vroundps; AVX-512's vrndscaleps) and a packed float->int
    assert re.search(r"\bv(roundps|rndscaleps)\s+.*%[yz]mm", asm)
    assert re.search(r"\bvcvttps2dq\s+.*%[yz]mm", asm)
    # the polynomials' steps as packed fused multiply-adds (numba_intrinsics.fma), where the CPU
    # has FMA (without it llvm.fma is a correct but scalar call)
    assert not _HOST_FMA or re.search(r"\bvfn?madd\w*ps\s+.*%[yz]mm", asm)
    assert not re.search(r"(exp|tanh)f?\b", asm.replace("kernel", ""))  # no libm call left


# float64 (branch hf64): vecmath's Cephes exp / tanh against NumPy's own float64 functions


def _ulps64(a, b):
    ia, ib = (v.view(np.int64) for v in (a, b))
    ia, ib = (np.where(i < 0, -(i & 0x7FFFFFFFFFFFFFFF), i) for i in (ia, ib))
    return np.abs((ia - ib).astype(np.float64))


def _grid64():
    dense = np.linspace(-30, 30, 600_001)
    wide = np.linspace(-760, 720, 300_001)  # exp's overflow / subnormal / 0 edges
    magnitudes = np.logspace(-323.5, 308.2, 300_000)
    special = np.array(
        [0.0, 5e-324, 2.3e-308, 1e-9, 0.625, 21.99, 22.0, 22.5, 708.4, 709.78, 709.782712893384]
        + [709.79, 744.4, 745.13, 745.14, 1.7e308]
    )
    x = np.concatenate([dense, wide, magnitudes, special])
    return np.concatenate([x, -x, [np.inf, -np.inf, np.nan]])


@pytest.mark.parametrize(
    "name, fn, ref",
    [("exp", tn.exp, np.exp), ("tanh", tn.tanh, np.tanh), ("sigmoid", tn.sigmoid, _sigmoid64)],
)
def test_float64_function_against_numpy(name, fn, ref):
    x = _grid64()
    c = tn.compile(tn.trace(lambda a: fn(a) * 1.0, x), backend="numba")
    assert c.report.compiled_kernels == 1 and not c.report.fallbacks
    c(x)
    got = c(x)  # (the kernel's from the first call at the latest)
    assert got.dtype == np.float64
    with np.errstate(over="ignore", under="ignore"):
        want = ref(x)
    finite = np.isfinite(x) & np.isfinite(want)
    ulps = _ulps64(got[finite], want[finite])
    assert ulps.max() <= 2, (name, x[finite][ulps.argmax()])
    np.testing.assert_array_equal(got[~finite], want[~finite])  # Inf, overflow, NaN
    zeros = x == 0
    np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(want[zeros]))  # -0
    if name == "tanh":
        tiny = (np.abs(x) < 1e-9) & np.isfinite(x)
        np.testing.assert_array_equal(got[tiny], x[tiny])
        np.testing.assert_array_equal(got[np.abs(x) >= 22.0], np.sign(x[np.abs(x) >= 22.0]))
    if name == "exp":  # subnormal results and the underflow to 0
        sub = (want >= 0) & (want < np.finfo(np.float64).tiny) & np.isfinite(x)
        assert sub.sum() > 1000 and _ulps64(got[sub], want[sub]).max() <= 1


def test_float64_loops_are_vectorised_without_libm_calls(tmp_path, monkeypatch, request):
    if optimised_subprocess(request):  # (the suite's kernels are -O0: conftest)
        return
    from tapernn.backends import numba_backend

    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(numba_backend, "_kernels", {})
    x = np.linspace(-3, 3, 64)
    c = tn.compile(
        tn.trace(lambda a: tn.tanh(a) * 2.0 + tn.sigmoid(a * 3.0) + tn.exp(a), x),
        backend="numba",
    )
    c(x)
    c(x)
    kernel = next(v for k, v in c.program.fn.__kwdefaults__.items() if k.startswith("nk"))
    asm = "\n".join(kernel.inspect_asm().values())
    assert re.search(r"\bvmulpd\s+.*%[yz]mm", asm)  # packed double arithmetic
    assert re.search(r"\bv(roundpd|rndscalepd)\s+.*%[yz]mm", asm)  # exp's n, packed
    assert not _HOST_FMA or re.search(r"\bvfn?madd\w*pd\s+.*%[yz]mm", asm)  # packed FMAs
    assert not re.search(r"(exp|tanh)\b", asm.replace("kernel", ""))  # no libm call left


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_fma_rounds_once(dt):
    """numba_intrinsics.fma (vecmath's polynomials): a * b + c rounded once -- the nearest
    value of the dtype to the exact rational result, where a product rounded first is not."""
    from fractions import Fraction

    from numba import njit

    from tapernn.backends.numba_intrinsics import fma

    @njit
    def run(a, b, c, out):
        for i in range(a.size):
            out[i] = fma(a[i], b[i], c[i])

    rng = np.random.default_rng(3)
    a, b, c = (rng.standard_normal(400).astype(dt) for _ in range(3))
    s = dt(2.0 ** -(np.finfo(dt).nmant // 2 + 1))  # (1 + s)^2 - 1 = 2s + s^2: s^2 lost unfused
    a[:2], b[:2], c[:2] = [1 + s, -1 - s], [1 + s, 1 + s], [-1, 1]
    out = np.empty_like(a)
    run(a, b, c, out)
    assert out[0] == 2 * s + s * s != a[0] * b[0] + c[0] and out[1] == -out[0]
    for x, y, z, got in zip(a, b, c, out):
        exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        miss = abs(Fraction(float(got)) - exact)
        for side in (-np.inf, np.inf):  # no neighbour of the answer is nearer
            assert miss <= abs(Fraction(float(np.nextafter(got, dt(side)))) - exact)
    special = np.array([np.inf, np.nan, 2.0], dt), np.array([0.0, 1.0, 3.0], dt)
    out = np.empty(3, dt)
    run(*special, np.array([1.0, 1.0, -6.0], dt), out)
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 0 and not np.signbit(out[2])


def test_fma_of_mixed_floats_computes_in_the_widest():
    """A float32 helper typed for float64 values (fma(float32 constant, float64, float32)): the
    arguments promoted, as numba's a * b + c promotes, and rounded once in float64 -- it raised
    a TypingError (no fma for mixed types), which failed a float32 step loop's wide compile."""
    from fractions import Fraction

    from numba import njit

    from tapernn.backends.numba_intrinsics import fma

    @njit
    def run(a, b, c):
        return fma(a, b, c)

    s = 2.0**-30  # (1 + s)(1 + s) - 1 = 2s + s^2: float64 keeps s^2 rounded once only
    got = run(np.float32(1 + 2.0**-20), 1 + s, np.float32(-1))
    exact = Fraction(float(np.float32(1 + 2.0**-20))) * Fraction(1 + s) - 1
    assert isinstance(got, float) and got == float(exact)  # (exact here: it fits in 53 bits)
    assert run(np.float32(2), np.float32(3), np.float32(1)) == 7
    assert str(run.nopython_signatures[-1].return_type) == "float32"  # (one dtype: its own)


@pytest.mark.parametrize("dt, top", [(np.float32, 20.0), (np.float64, 44.0)])
def test_tanh_exp_with_one_scale_gives_the_two_scale_bits(dt, top):
    """tanh's exp (argument in [0, 2 x clamp]) scales by 2^n in one product: the bits of the
    general form's two (2^h 2^(n-h), kept for subnormal results), over its whole range."""
    from numba import njit

    from tapernn.backends import numba_intrinsics, vecmath

    core, c = (
        (vecmath._exp_core, vecmath._CONSTANTS)
        if dt == np.float32
        else (vecmath._exp_core64, vecmath._CONSTANTS64)
    )
    space = {"np": np, "f32_bits": numba_intrinsics.f32_bits}
    space.update(f64_bits=numba_intrinsics.f64_bits, fma=numba_intrinsics.fma)
    space.update({k: dt(v) for k, v in c.items()})
    fns = []
    for small in (True, False):
        body = "".join(f"    {line}\n" for line in core("t", "x", small))
        exec(f"def f(x):\n{body}    return tv\n", space)  # noqa: S102 (the generated lines)
        fns.append(njit(space["f"]))
    assert "th" not in "".join(core("t", "x", True))  # (the one-product form)

    @njit
    def run(f, x, out):
        for i in range(x.size):
            out[i] = f(x[i])

    x = np.concatenate([np.linspace(0, top, 2_000_001, dtype=dt), [dt(top)]])
    a, b = np.empty_like(x), np.empty_like(x)
    run(fns[0], x, a)
    run(fns[1], x, b)
    np.testing.assert_array_equal(a.view(f"i{a.itemsize}"), b.view(f"i{b.itemsize}"))
    np.testing.assert_allclose(a, np.exp(x.astype(np.float64)), rtol=4 * np.finfo(dt).eps)


def _helper(lines, dt):
    """An njit loop over a 1-D array of the scalar `lines` ("t", "x" -> "r"), vecmath's names."""
    from numba import njit

    from tapernn.backends import numba_intrinsics, vecmath

    space = {"np": np, "f32_bits": numba_intrinsics.f32_bits}
    space.update(f64_bits=numba_intrinsics.f64_bits, fma=numba_intrinsics.fma)
    space.update({k: np.float32(v) for k, v in vecmath._CONSTANTS.items()})
    space.update({k: np.float64(v) for k, v in vecmath._CONSTANTS64.items()})
    body = "".join(f"        {line}\n" for line in lines)
    exec(f"def loop(x, o):\n    for i in range(x.size):\n{body}        o[i] = r\n", space)  # noqa: S102
    return njit(error_model="numpy")(space["loop"])


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_sigmoid_keeps_the_bits_of_exp_then_divide(dt):
    """The sigmoid's exp(-|x|) without exp_lines' upper clamp and overflow select (hgate:
    -|x| <= 0): the bits of exp_lines' full exp, then (1 or e) / (1 + e), at every non-NaN x,
    the underflow edges included; NaN in, NaN out."""
    from tapernn.backends import vecmath

    c = "VM" if dt == np.float32 else "VD"
    full = [
        *vecmath.exp_lines("t", "-np.abs(x[i])", "te", c, inline=True),
        f"r = ({c}_ONE if x[i] >= {c}_ZERO else te) / ({c}_ONE + te)",
    ]
    make = vecmath.sigmoid_lines if dt == np.float32 else vecmath.sigmoid64_lines
    x = (_grid() if dt == np.float32 else _grid64()).astype(dt)
    x = np.concatenate([x, np.linspace(-800, 800, 400_001).astype(dt)])
    a, b = np.empty_like(x), np.empty_like(x)
    _helper(full, dt)(x, a)
    _helper(make("t", "x[i]", "r", inline=True), dt)(x, b)
    num = ~np.isnan(x)
    np.testing.assert_array_equal(a[num].view(f"i{a.itemsize}"), b[num].view(f"i{b.itemsize}"))
    assert np.isnan(b[~num]).all() and (~num).any()


def test_float64_tanh_divides_once_a_vector():
    """float64 tanh's two forms share one division (hgate: P/Q below 0.625, 1 - 2d / (2^n m +
    d) above, where the Pade exp's quotient and 2 / (e + 1) were two more): one packed
    division a vector, as the exp's; the sigmoid's exp(-|x|) and quotient two. It had three."""
    from tapernn.backends import numba_interleave, vecmath

    if not _HOST_FMA:  # (no FMA: llvm.fma is a scalar call, the loops stay scalar)
        return
    counts = []
    for make in (vecmath.tanh64_lines, vecmath.sigmoid64_lines, vecmath.exp64_lines):
        f = _helper(make("t", "x[i]", "r", inline=True), np.float64)
        numba_interleave._set(1)  # (one vector a loop iteration: divisions per vector)
        try:
            f.compile("(float64[::1], float64[::1])")
        finally:
            numba_interleave._set(0)
        counts.append(len(re.findall(r"\bvdivpd\b", f.inspect_asm(f.signatures[0]))))
    tanh, sigmoid, exp = counts
    assert exp == 1 and sigmoid == 2 and tanh == 1, counts
