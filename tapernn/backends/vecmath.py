"""float32 tanh for the numba kernels as straight-line float64 arithmetic LLVM vectorises (numba
without Intel SVML calls scalar libm tanhf per element, 3-4x slower than NumPy's SIMD ufunc):
range reduction by ln 2, a Taylor polynomial in float64 (relative error < 2e-12, far below
float32's 6e-8), one rounding to float32 -- tests/test_vecmath.py checks it against float64
NumPy rounded to float32 over a dense grid with the extremes, signed zeros, NaN and Inf. (The
same for exp lost to libm expf: numba_backend.VECTOR_FLOAT32.)"""

from __future__ import annotations

import math

LN2 = repr(math.log(2.0))
INV_LN2 = repr(1.0 / math.log(2.0))
# e^r - 1 = r * P(r), P(r) = sum_k r^k / (k + 1)!, k = 0..11: on [0, ln 2) the remainder is below
# ln2^12 / 13! < 2e-12 of the value
_EXPM1 = [repr(1.0 / math.factorial(k + 1)) for k in range(12)]


def _horner(coefficients: list[str], r: str) -> str:
    return (
        "".join(f"({c} + {r} * " for c in coefficients[:-1])
        + coefficients[-1]
        + ")" * (len(coefficients) - 1)
    )


def tanh_lines(t: str, x: str, out: str) -> list[str]:
    """{out} = np.float32(tanh({x})) for a float32 {x}: tanh|x| = m / (m + 2), m = expm1(2|x|)
    = 2^k (1 + em1(r)) - 1 (no cancellation: m >= 0), |x| clamped at 9.75 where tanh rounds to
    1 in float32; the sign copied (tanh(-0) = -0), NaN passed through."""
    return [
        f"{t}a = np.float64({x})",
        f"{t}y = min(np.abs({t}a) * 2.0, 19.5)",
        f"{t}k = np.int32({t}y * {INV_LN2})",
        f"{t}r = {t}y - np.float64({t}k) * {LN2}",
        f"{t}p = np.float64(np.int32(1) << {t}k)",  # k <= 28 (int32 -> float64 vectorises)
        f"{t}m = {t}p * ({t}r * {_horner(_EXPM1, t + 'r')}) + ({t}p - 1.0)",
        f"{t}m = np.copysign({t}m / ({t}m + 2.0), {t}a)",
        f"{out} = np.float32({t}a if {t}a != {t}a else {t}m)",
    ]
