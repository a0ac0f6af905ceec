"""float32 exp, tanh and sigmoid for the numba kernels as straight-line float32 arithmetic LLVM
vectorises (numba without Intel SVML calls scalar libm expf/tanhf per element, and float64
arithmetic on float32 data does not vectorise well either: both 3-8x slower than this). Cephes'
expf (Cody-Waite reduction by ln 2, degree-6 polynomial, 2^n from its bit pattern in two
halves, so subnormal results round once) and tanhf (odd polynomial below 0.625, 1 - 2/(e^2|x|
+ 1) above); tests/test_vecmath.py checks them against float64 NumPy rounded to float32 over a
dense grid with the extremes, subnormals, signed zeros, NaN and Inf."""

from __future__ import annotations

import hashlib
import os

import numpy as np

# module globals of every generated kernel (numba freezes them as float32 constants: a Python
# literal would promote float32 arithmetic to float64)
_CONSTANTS = {
    "VM_LOG2E": 1.4426950408889634,
    "VM_LN2_HI": 0.693359375,  # 9 significant bits: n * LN2_HI is exact for |n| < 2^15
    "VM_LN2_LO": -2.12194440e-4,
    "VM_HALF": 0.5,
    "VM_ONE": 1.0,
    "VM_TWO": 2.0,
    "VM_127": 127.0,
    "VM_2P23": 8388608.0,
    "VM_ZERO": 0.0,
    "VM_INF": float("inf"),
    "VM_EXP_HI": 88.72283935546875,  # largest float32 x with exp(x) <= FLT_MAX (rounded)
    "VM_EXP_LO": -103.97208404541016,  # exp(x) below half the smallest subnormal: 0
    "VM_TANH_SMALL": 0.625,
    "VM_TANH_CLAMP": 10.0,  # 1 - 2 / (e^20 + 1) rounds to 1 in float32
}
# Cephes expf: exp(r) = 1 + r + r^2 P(r) on |r| <= ln2 / 2
_EXP_P = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)
# Cephes tanhf: tanh(x) = x + x^3 Q(x^2) on |x| < 0.625
_TANH_Q = (
    -5.70498872745e-3,
    2.06390887954e-2,
    -5.37397155531e-2,
    1.33314422036e-1,
    -3.33332819422e-1,
)
for _k, _c in enumerate(_EXP_P):
    _CONSTANTS[f"VM_EP{_k}"] = _c
for _k, _c in enumerate(_TANH_Q):
    _CONSTANTS[f"VM_TQ{_k}"] = _c

# float64 (issue 19, BENCHMARKS.md "hf64"): Cephes' exp (Cody-Waite reduction by ln 2, the
# Pade form 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)), 2^n in two halves) and tanh (x + x^3 P/Q(x^2)
# below 0.625, 1 - 2 / (e^2|x| + 1) above): as fast as NumPy's SIMD float64 tanh, 3x numba's
# scalar libm (which also made float64 loops keep NumPy's tanh, so not run as step loops)
_CONSTANTS64 = {
    "VD_LOG2E": 1.4426950408889634,
    "VD_LN2_HI": 6.93145751953125e-1,
    "VD_LN2_LO": 1.42860682030941723212e-6,
    "VD_HALF": 0.5,
    "VD_ONE": 1.0,
    "VD_TWO": 2.0,
    "VD_1023": 1023.0,
    "VD_2P52": 4503599627370496.0,
    "VD_ZERO": 0.0,
    "VD_INF": float("inf"),
    "VD_EXP_HI": 709.782712893384,  # log(DBL_MAX) rounded: exp above it overflows
    "VD_EXP_LO": -745.1332191019412,  # exp below it is under half the smallest subnormal
    "VD_TANH_SMALL": 0.625,
    "VD_TANH_CLAMP": 22.0,  # 1 - 2 / (e^44 + 1) rounds to 1 in float64
    "VD_EP0": 1.26177193074810590878e-4,
    "VD_EP1": 3.02994407707441961300e-2,
    "VD_EP2": 9.99999999999999999910e-1,
    "VD_EQ0": 3.00198505138664455042e-6,
    "VD_EQ1": 2.52448340349684104192e-3,
    "VD_EQ2": 2.27265548208155028766e-1,
    "VD_EQ3": 2.00000000000000000009e0,
    "VD_TP0": -9.64399179425052238628e-1,
    "VD_TP1": -9.92877231001918586564e1,
    "VD_TP2": -1.61468768441708447952e3,
    "VD_TQ0": 1.12811678491632931402e2,
    "VD_TQ1": 2.23548839060100448583e3,
    "VD_TQ2": 4.84406305325125486048e3,
}


def _assignments(constants: dict[str, float], dtype: str) -> str:
    return "".join(
        f"{name} = np.{dtype}({value!r})\n"
        if np.isfinite(value)
        else f"{name} = np.{dtype}(np.inf)\n"
        for name, value in constants.items()
    )


_CONSTANT_LINES = _assignments(_CONSTANTS, "float32") + _assignments(_CONSTANTS64, "float64")


def constants() -> dict[str, np.float32]:
    return {name: np.float32(value) for name, value in _CONSTANTS.items()}


def _horner(coefficients: list[str], r: str) -> str:
    """c0 + r (c1 + r (...)), constant term first, each step one fused multiply-add (the chain
    is latency-bound: 2x shorter than a product and a sum, and rounded once a step)."""
    text = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        text = f"fma({text}, {r}, {c})"
    return text


def _exp_core(t: str, c: str, small: bool = False) -> list[str]:
    """{t}v = exp({c}) for a float32 {c} in [VM_EXP_LO, VM_EXP_HI] (no NaN); `small`: {c} in
    [0, 20] (tanh's), where 2^n is one normal factor and p 2^n exact: the bits of the two."""
    poly = _horner([f"VM_EP{k}" for k in reversed(range(len(_EXP_P)))], f"{t}r")
    lines = [
        f"{t}n = np.floor(fma({c}, VM_LOG2E, VM_HALF))",
        f"{t}r = fma(-{t}n, VM_LN2_LO, fma(-{t}n, VM_LN2_HI, {c}))",
        f"{t}p = fma({poly}, {t}r * {t}r, {t}r) + VM_ONE",
    ]
    if small:
        return [*lines, f"{t}v = {t}p * f32_bits(np.int32(({t}n + VM_127) * VM_2P23))"]
    return [
        *lines,
        # 2^n = 2^h 2^(n-h), both halves normal for n in [-150, 128]: a subnormal result
        # rounds once, in the last product
        f"{t}h = np.floor({t}n * VM_HALF)",
        f"{t}s = f32_bits(np.int32(({t}h + VM_127) * VM_2P23))",
        f"{t}q = f32_bits(np.int32((({t}n - {t}h) + VM_127) * VM_2P23))",
        f"{t}v = ({t}p * {t}s) * {t}q",
    ]


def exp_lines(t: str, x: str, out: str, c: str = "VM", inline: bool = False) -> list[str]:
    """{out} = exp({x}) for a float32 {x} (constants `c` "VM"; float64: "VD", exp64_lines):
    +Inf above {c}_EXP_HI, 0 below {c}_EXP_LO, NaN passed through. A call of the helpers
    module's function unless `inline` (see CALLS)."""
    if CALLS and not inline:
        return [f"{out} = {c.lower()}_exp({x})"]
    core = _exp_core if c == "VM" else _exp_core64
    return [
        f"{t}x = {x}",
        f"{t}c = {c}_EXP_LO if {t}x < {c}_EXP_LO else ({t}x if {t}x < {c}_EXP_HI else {c}_EXP_HI)",
        *core(t, f"{t}c"),
        f"{t}v = {c}_ZERO if {t}x < {c}_EXP_LO else ({t}v if {t}x <= {c}_EXP_HI else {c}_INF)",
        f"{out} = {t}x if {t}x != {t}x else {t}v",
    ]


def tanh_lines(t: str, x: str, out: str, inline: bool = False) -> list[str]:
    """{out} = tanh({x}) for a float32 {x}: the odd polynomial below 0.625 (tanh(-0) = -0,
    tanh(x) = x for tiny x), 1 - 2 / (e^(2|x|) + 1) with |x| clamped at 10 above (+-1 there and
    at +-Inf), the sign copied; NaN passed through."""
    if CALLS and not inline:
        return [f"{out} = vm_tanh({x})"]
    q = _horner([f"VM_TQ{k}" for k in reversed(range(len(_TANH_Q)))], f"{t}z")
    return [
        f"{t}x = {x}",
        f"{t}a = np.abs({t}x)",
        f"{t}z = {t}x * {t}x",
        f"{t}y = fma({t}a, {t}z * {q}, {t}a)",
        f"{t}c = VM_TWO * ({t}a if {t}a < VM_TANH_CLAMP else VM_TANH_CLAMP)",
        *_exp_core(t, f"{t}c", small=True),
        f"{t}l = VM_ONE - VM_TWO / ({t}v + VM_ONE)",
        f"{t}m = np.copysign({t}y if {t}a < VM_TANH_SMALL else {t}l, {t}x)",
        f"{out} = {t}x if {t}x != {t}x else {t}m",
    ]


def sigmoid_lines(t: str, x: str, out: str, inline: bool = False) -> list[str]:
    """{out} = sigma({x}) for a float32 {x}, exact in both tails as numba_backend's form:
    e = exp(-|x|) never overflows, sigma = (1 or e) / (1 + e); 0 below -103.97, NaN passed
    through."""
    if CALLS and not inline:
        return [f"{out} = vm_sigmoid({x})"]
    return _sigmoid(t, x, out, "VM")


def _sigmoid(t: str, x: str, out: str, c: str) -> list[str]:
    """sigmoid_lines' (constants `c`: "VM" float32, "VD" float64): exp_lines' bits of
    exp(-|x|) for every x but NaN without its upper clamp and overflow select (-|x| <= 0),
    NaN passed through by the last line alone (a NaN clamped to EXP_LO instead would run the
    subnormal products, microcode assists on Intel: 2x the forward gate pass's time)."""
    core = _exp_core if c == "VM" else _exp_core64
    return [
        f"{t}i = {x}",
        f"{t}x = -np.abs({t}i)",
        f"{t}c = {c}_EXP_LO if {t}x < {c}_EXP_LO else {t}x",  # (NaN stays NaN: no subnormals)
        *core(t, f"{t}c"),
        f"{t}e = {c}_ZERO if {t}x < {c}_EXP_LO else {t}v",
        f"{t}y = ({c}_ONE if {t}i >= {c}_ZERO else {t}e) / ({c}_ONE + {t}e)",
        f"{out} = {t}i if {t}i != {t}i else {t}y",
    ]


def _pade64(t: str, c: str) -> list[str]:
    """exp({c}) = 2^{t}n ({t}w + {t}u) / ({t}w - {t}u) for a float64 {c} in [VD_EXP_LO,
    VD_EXP_HI] (Cephes' Pade form: {t}p = 1 + 2 {t}u / ({t}w - {t}u) is the quotient)."""
    return [
        f"{t}n = np.floor(fma({c}, VD_LOG2E, VD_HALF))",
        f"{t}r = fma(-{t}n, VD_LN2_LO, fma(-{t}n, VD_LN2_HI, {c}))",
        f"{t}z = {t}r * {t}r",
        f"{t}u = {t}r * {_horner(['VD_EP2', 'VD_EP1', 'VD_EP0'], f'{t}z')}",
        f"{t}w = {_horner(['VD_EQ3', 'VD_EQ2', 'VD_EQ1', 'VD_EQ0'], f'{t}z')}",
    ]


def _scales64(t: str) -> list[str]:
    """2^{t}n = {t}s {t}q, both normal for {t}n in [-1075, 1024]: a product by {t}s then by
    {t}q rounds once, in the last, where the result is subnormal."""
    return [
        f"{t}h = np.floor({t}n * VD_HALF)",
        f"{t}s = f64_bits(np.int64(({t}h + VD_1023) * VD_2P52))",
        f"{t}q = f64_bits(np.int64((({t}n - {t}h) + VD_1023) * VD_2P52))",
    ]


def _exp_core64(t: str, c: str, small: bool = False) -> list[str]:
    """{t}v = exp({c}) for a float64 {c} in [VD_EXP_LO, VD_EXP_HI] (no NaN); `small` as
    _exp_core's ({c} in [0, 44]: one scale)."""
    lines = [*_pade64(t, c), f"{t}p = VD_ONE + VD_TWO * ({t}u / ({t}w - {t}u))"]
    if small:
        return [*lines, f"{t}v = {t}p * f64_bits(np.int64(({t}n + VD_1023) * VD_2P52))"]
    return [*lines, *_scales64(t), f"{t}v = ({t}p * {t}s) * {t}q"]


def exp64_lines(t: str, x: str, out: str, inline: bool = False) -> list[str]:
    """{out} = exp({x}) for a float64 {x} (exp_lines with the VD constants)."""
    return exp_lines(t, x, out, "VD", inline)


def tanh64_lines(t: str, x: str, out: str, inline: bool = False) -> list[str]:
    """{out} = tanh({x}) for a float64 {x} (as tanh_lines, Cephes' float64 forms, |x| clamped
    at 22 above 0.625, both forms' quotients one division); NaN passed through."""
    if CALLS and not inline:
        return [f"{out} = vd_tanh({x})"]
    # (one division for both forms where there were three -- vector division bounds float64's
    # gate loops, BENCHMARKS.md "hgate": below 0.625 the quotient P/Q, y = a + a g P/Q, the
    # same bits as before; above, with the Pade exp e^2a = 2^n m / d, 1 - 2 / (e^2a + 1) =
    # 1 - 2 d / (2^n m + d), 2^n m exact for n <= 64: max 1.34 ulps from tanh, 1.27 before)
    return [
        f"{t}x = {x}",
        f"{t}a = np.abs({t}x)",
        f"{t}g = {t}x * {t}x",
        f"{t}k = {_horner(['VD_TP2', 'VD_TP1', 'VD_TP0'], f'{t}g')}",
        f"{t}j = {_horner(['VD_TQ2', 'VD_TQ1', 'VD_TQ0 + ' + t + 'g'], f'{t}g')}",
        f"{t}c = VD_TWO * ({t}a if {t}a < VD_TANH_CLAMP else VD_TANH_CLAMP)",
        *_pade64(t, f"{t}c"),
        f"{t}d = {t}w - {t}u",
        f"{t}e = ({t}w + {t}u) * f64_bits(np.int64(({t}n + VD_1023) * VD_2P52))",
        f"{t}l = {t}a < VD_TANH_SMALL",
        f"{t}o = ({t}k if {t}l else {t}d) / ({t}j if {t}l else {t}e + {t}d)",
        f"{t}f = {t}a if {t}l else VD_ONE",
        f"{t}m = np.copysign(fma({t}f, ({t}g if {t}l else -VD_TWO) * {t}o, {t}f), {t}x)",
        f"{out} = {t}x if {t}x != {t}x else {t}m",
    ]


def sigmoid64_lines(t: str, x: str, out: str, inline: bool = False) -> list[str]:
    """{out} = sigma({x}) for a float64 {x}: sigmoid_lines' form with the VD constants (its two
    divisions kept: sigma = d / (d + 2^n m) of the Pade form's terms, one division, is up to
    2.5 ulps off below 0, where e = 2^n (1 + 2u / d) damps their rounding: 0.5, "hgate")."""
    if CALLS and not inline:
        return [f"{out} = vd_sigmoid({x})"]
    return _sigmoid(t, x, out, "VD")


# numba_backend.VECTOR_FLOAT64: the float64 line makers by op
FLOAT64 = {"tanh": tanh64_lines, "exp": exp64_lines, "sigmoid": sigmoid64_lines}


# The kernels call these six as @njit functions of one generated module (HELPERS_SOURCE, in the
# kernel cache directory beside the kernels, loaded by numba_backend._load first) instead of carrying
# their ~10-20 lines inline at every use: numba types and lowers each function once per process
# (loaded from numba's cache after the first), and a kernel's typing and lowering see one call
# per use instead of the lines -- LLVM still inlines the calls, so the machine code and the bits
# are the same (BENCHMARKS.md hcold2, "CI with a cold kernel cache, second pass").
# $TAPERNN_NUMBA_INLINE_MATH=1 writes them inline as before.
CALLS = os.environ.get("TAPERNN_NUMBA_INLINE_MATH", "0") in ("", "0")
_HELPERS = (
    ("vm_exp", exp_lines),
    ("vm_tanh", tanh_lines),
    ("vm_sigmoid", sigmoid_lines),
    ("vd_exp", exp64_lines),
    ("vd_tanh", tanh64_lines),
    ("vd_sigmoid", sigmoid64_lines),
)


def _helpers_source() -> str:
    text = [
        '"""tapernn generated numba helpers (vecmath.py); safe to delete."""',
        "import numpy as np",
        "from numba import njit",
        "from tapernn.backends.numba_intrinsics import f32_bits, f64_bits, fma",
        _CONSTANT_LINES,
    ]
    for name, lines in _HELPERS:
        text += ["", '@njit(cache=True, error_model="numpy", nogil=True)', f"def {name}(x):"]
        text += [f"    {line}" for line in lines("t", "x", "r", inline=True)]
        text.append("    return r")
    return "\n".join(text) + "\n"


HELPERS_SOURCE = _helpers_source()
# (its name carries its text's digest: a kernel module names the helpers it was compiled with)
HELPERS_MODULE = "tapernn_vm_" + hashlib.sha1(HELPERS_SOURCE.encode()).hexdigest()[:20]
HEADER = (
    "from tapernn.backends.numba_intrinsics import c_row, c_view, f32_bits, f64_bits, fma, opaque\n"
    + f"from {HELPERS_MODULE} import {', '.join(name for name, _ in _HELPERS)}\n"
    + _CONSTANT_LINES
)
