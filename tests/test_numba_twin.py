"""numba_twin.either (backends/step_pass.py's call of a pass or its strided twin, BENCHMARKS.md
"hisa"): where every root is a C array to numba the pass alone is compiled -- the twin never
typed -- and runs; where a root's layout is "A" both are compiled and the run-time test picks
(the pass for contiguous rows, the twin for strided ones), as the step loops' branch before."""

import numpy as np
import pytest

from tapernn.backends import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed")


def _functions():
    from numba import njit

    from tapernn.backends.numba_twin import either

    @njit
    def fast(w, a, out):
        for i in range(a.shape[0]):
            out[i, :w] = a[i, :w] + 1.0

    @njit
    def slow(w, a, out):
        for i in range(a.shape[0]):
            out[i, :w] = a[i, :w] + 2.0

    @njit
    def run(x, out):
        a = x[0, 1:3]  # (a C array's rows lo:hi: C to numba; an "A" array's: "A")
        either(a.strides[1] == a.itemsize, (a, out), fast, slow, (2, a[:, 0:2], out))

    return fast, slow, run


def test_c_roots_compile_the_pass_alone():
    fast, slow, run = _functions()
    x, out = np.arange(24.0).reshape(2, 3, 4), np.zeros((2, 2))
    run(x, out)
    np.testing.assert_array_equal(out, x[0, 1:3, 0:2] + 1.0)
    assert len(fast.signatures) == 1 and not slow.signatures  # (the twin never compiled)


def test_other_roots_branch_on_the_rows_at_run_time():
    fast, slow, run = _functions()
    out = np.zeros((2, 2))
    wide = np.arange(48.0).reshape(2, 3, 8)
    run(wide[:, :, :4], out)  # (layout "A", rows contiguous: the pass)
    np.testing.assert_array_equal(out, wide[0, 1:3, 0:2] + 1.0)
    assert len(fast.signatures) == 1 and len(slow.signatures) == 1  # (both typed: a branch)
    run(wide[:, :, ::2], out)  # (strided rows: the twin)
    np.testing.assert_array_equal(out, wide[0, 1:3, 0:4:2] + 2.0)


def test_rows_the_caller_checks_compile_no_twin_and_raise_when_strided():
    """Roots left out of `roots` are the caller's to check (step_fuse.strided: the step loop's
    own carries, xs and ys, "A" to numba in the backward loops): the pass alone is compiled even
    for an "A" array; rows found strided after all raise -- the pass would read them as C rows."""
    from numba import njit

    from tapernn.backends.numba_twin import either

    fast, slow, _ = _functions()

    @njit
    def checked(x, out):
        a = x[0, 1:3]
        either(a.strides[1] == a.itemsize, (out,), fast, slow, (2, a[:, 0:2], out))

    out, wide = np.zeros((2, 2)), np.arange(48.0).reshape(2, 3, 8)
    checked(wide[:, :, :4], out)  # (layout "A", rows contiguous)
    np.testing.assert_array_equal(out, wide[0, 1:3, 0:2] + 1.0)
    assert len(fast.signatures) == 1 and not slow.signatures
    with pytest.raises(ValueError, match="strided rows"):
        checked(wide[:, :, ::2], out)


def test_in_python_the_same_choice():
    from tapernn.backends.numba_twin import either

    seen = []
    either(True, (), lambda *a: seen.append(("fast", a)), None, (1, 2))
    either(False, (), None, lambda *a: seen.append(("slow", a)), (3,))
    assert seen == [("fast", (1, 2)), ("slow", (3,))]
