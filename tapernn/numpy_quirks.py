"""NumPy defects the code generator works around, found by a probe at import (no version list).

NEGATIVE_OUT_BROKEN: NumPy 2.4.6 on AVX-512 (x86-64-v4: AMD Zen 4, an Intel Xeon, hisa) computes
`np.negative(x, out=y)` wrong when x and y are strided with the same step of 8 float64 or 4
float32 elements: it reads x as if contiguous (`a = np.arange(16.)[::8]; np.negative(a, out=a)`
gives [-0, -1], not [-0, -8]). A fresh result (no out=) is right, and so are all other unary
ufuncs and the binary ones (probed over steps 1-19). The planner writes in place into such
views (a gate's column of a step's rows) when PlanOptions' strided thresholds allow it: then
the lowering negates as a multiplication by -1 (codegen.Program._call, the inline sigmoid)."""

from __future__ import annotations

import numpy as np


def _negative_out_broken() -> bool:
    """Whether np.negative into a strided out= of the input's step gives a wrong result."""
    for dtype in (np.float64, np.float32, np.int64, np.int32):
        for step in range(2, 17):
            a = np.arange(3 * step, dtype=dtype)
            view = a[::step]
            np.negative(view, out=view)
            if not np.array_equal(view, -np.arange(0, 3 * step, step, dtype=dtype)):
                return True
    return False


NEGATIVE_OUT_BROKEN = _negative_out_broken()
