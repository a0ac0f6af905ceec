"""numba_put.put (issue 19's cold compile): the step loops' copies into slices (their
concatenations' parts, saved rows) without numba's slice assignment, whose error message's
unicode formatting numba typed once per process and optimised again in every kernel. Against
NumPy's `dst[...] = src`, bit for bit: any layout (C, F, strided, column slices), 1-3 dims, the
dtype cast numba's setitem does (float64 -> float32, float -> bool), overlapping memory in
either direction (src read from a copy, as NumPy and numba do), and a shape mismatch -- a
broadcastable one too -- raises instead of writing out of bounds. The translated step loops
assign no slice (test_step_fuse's structural test)."""

import numpy as np
import pytest

pytest.importorskip("numba")

from numba import njit
from numba.core.errors import TypingError

from tapernn.backends import step_selects
from tapernn.backends.numba_put import put


@njit(nogil=True, error_model="numpy")
def _copy(dst, src):
    put(dst, src)


def _both(dst, src):
    """(put's result, NumPy's) on copies of `dst`'s base."""
    want = dst.copy()
    want[...] = src
    _copy(dst, src)
    return dst, want


def test_put_equals_numpy_assignment_in_any_layout(rng):
    a = rng.standard_normal((5, 7))
    cases = [
        (np.zeros((5, 12))[:, 3:10], a),  # a concatenation's part into its columns
        (np.zeros((7, 5)), a.T),  # F-ordered source
        (np.zeros((3, 7)), a[::2]),  # strided rows
        (np.zeros((7, 5), order="F"), a.T.copy()),
        (np.zeros((12, 5))[::2, ::-1][:5].T[:, :5], a[:, ::-1][:, :5]),
        (np.zeros(9)[::3], a[0, :3]),
        (np.zeros((2, 3, 4)), np.arange(24.0).reshape(2, 3, 4)),
    ]
    for dst, src in cases:
        got, want = _both(dst, src)
        assert got.tobytes() == want.tobytes()


def test_put_casts_as_numpy_does(rng):
    a = rng.standard_normal((4, 6))
    a[1, 2] = 0.0
    a[3, 0] = -0.0
    for dtype in (np.float32, np.bool_):
        got, want = _both(np.ones((4, 6), dtype), a)
        assert got.dtype == dtype and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("shift", [1, 2, 5])
def test_put_reads_overlapping_memory_as_numpy_does(shift):
    for forward in (True, False):
        x = np.arange(48.0).reshape(4, 12)
        want = x.copy()
        a, b = (
            (slice(shift, shift + 6), slice(0, 6))
            if forward
            else (slice(0, 6), slice(shift, shift + 6))
        )
        want[:, a] = want[:, b]
        _copy(x[:, a], x[:, b])
        assert x.tobytes() == want.tobytes()
    x = np.arange(12.0)
    want = x.copy()
    want[2:] = want[:-2]
    _copy(x[2:], x[:-2])
    assert x.tobytes() == want.tobytes()
    x = np.arange(12.0).reshape(3, 4)
    _copy(x, x)
    assert x.tobytes() == np.arange(12.0).reshape(3, 4).tobytes()


def test_put_refuses_other_shapes_and_types():
    dst = np.zeros((5, 7))
    for src in (np.zeros((5, 6)), np.zeros((1, 7)), np.zeros((6, 7))):  # (no broadcasting)
        with pytest.raises(ValueError, match="shapes differ"):
            _copy(dst, src)
    assert not dst.any()
    ro = np.zeros((5, 7))
    ro.flags.writeable = False
    for d, s in ((np.zeros(7), np.zeros((1, 7))), (ro, np.zeros((5, 7)))):
        with pytest.raises(TypingError):
            _copy(d, s)


def test_puts_rewrites_only_copies_into_slices():
    lines = [
        "w0[:, _o:_o + v19.shape[1]] = v19",
        "w1[:, 5:5 + a3.shape[1]] = a3",
        "P0[...] = a2",
        "out[i0, i1] = v3",  # (an item: kept)
        "v4 = w0[:, 0:7]",
        "_r = f(x[...])",
    ]
    assert step_selects.puts(lines) == [
        "_put(w0[:, _o:_o + v19.shape[1]], v19)",
        "_put(w1[:, 5:5 + a3.shape[1]], a3)",
        "_put(P0, a2)",
        *lines[3:],
    ]
