"""Row reductions in loop bodies (hmask, issue 19; MaskZero's zero-row test is a row max of |x|):
push_out_of_loops moves a max over the xs alone out of the loop, time-batched (its axes + 1;
exact, so the same bits), and the batch split's row-wise check (scan_rebatch) takes reductions
that are not over the rows. By structure and against the reference interpreter."""

import numpy as np
import pytest
from pass_check import assert_same
from scan_bodies import scanned

import tapernn as tn
from tapernn import functional as F
from tapernn import passes as P
from tapernn.interpret import interpret
from tapernn.scan_rebatch import rebatch

T, B, H = 4, 5, 3


def _body(over_carry: bool = False):
    """A masked tanh RNN step: rows of x that are all zero output 0 and reset h; the kept rows
    are scaled by their largest |x| (keepdims) and the step's largest |x| per row (not kept)."""

    def step(h, x, w):
        src = h if over_carry else x
        big = tn.max(tn.abs(src), 1, keepdims=True)
        peak = tn.reshape(tn.max(tn.abs(x), 1), (B, 1))
        h2 = tn.tanh(h @ w + x @ w) * (big + peak)  # (x @ w: worth a push-out)
        h2 = tn.where(F.equal(big, 0), 0, h2)
        return [h2, h2]

    z = np.zeros((B, H))
    return tn.trace(step, z, z, np.zeros((H, H)), names=["h", "x", "W"])


def _arrays(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, H))
    x[0, 1] = x[2, [0, 4]] = 0
    x[3, 2, 0] = -0.0
    return [rng.standard_normal((B, H)), x, rng.standard_normal((H, H))]


def test_a_max_over_the_xs_leaves_the_loop_time_batched():
    arrays = _arrays(0)
    g = tn.trace(scanned(_body(), 1, 1), *arrays)
    out = assert_same(g, [P.push_out_of_loops], arrays, rtol=0, atol=0)
    (s,) = [n for n in out.nodes if n.op == "scan"]
    assert not any(n.op == "max" for n in s.attrs["body"].nodes)
    outside = sorted((n.attrs["axis"], n.shape) for n in out.nodes if n.op == "max")
    assert outside == [((2,), (T, B)), ((2,), (T, B, 1))]


def test_a_max_over_a_carry_stays_in_the_loop():
    arrays = _arrays(1)
    g = tn.trace(scanned(_body(over_carry=True), 1, 1), *arrays)
    out = assert_same(g, [P.push_out_of_loops], arrays, rtol=0, atol=0)
    (s,) = [n for n in out.nodes if n.op == "scan"]
    inside = [n for n in s.attrs["body"].nodes if n.op == "max"]
    assert [n.inputs[0].inputs[0] for n in inside] == [s.attrs["body"].inputs[0]]


def test_the_batch_split_takes_reductions_not_over_the_rows():
    arrays = _arrays(2)
    body = _body(over_carry=True)
    half = rebatch(body, 1, 1, 2)
    assert not isinstance(half, str), half
    assert [n.shape for n in half.nodes if n.op == "max"] == [(2, 1), (2,)]
    h, x, w = arrays[0], arrays[1][2], arrays[2]
    full = interpret(body, h, x, w)
    for a, b in zip(interpret(half, h[:2], x[:2], w), full):
        np.testing.assert_array_equal(a, b[:2])

    def across(h, x, w):  # (a row's value depends on every row: no split)
        return [h * tn.sum(x, 0, keepdims=True), h]

    z = np.zeros((B, H))
    assert rebatch(tn.trace(across, z, z, z), 1, 1, 2) == "sum without the batch axis first"


def test_the_numba_whole_program_kernel_lowers_max(monkeypatch):
    """loop_source's max (numba's whole-program and loop kernels): = np.max, NaN kept."""
    from test_numba_program import WHOLE, _arrays
    from test_numba_program import _body as rnn_body

    from tapernn.backends import numba_available

    if not numba_available():
        pytest.skip("numba not installed")
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    body, arrays = rnn_body(), _arrays()
    arrays[1][1, 0, :] = np.nan  # (a NaN step row: its max is NaN, the others' are not)
    arrays[1][2, 1, :] = -np.inf

    def f(h, xs, w):
        r = tn.scan(body, [h], [xs], [w])
        return [tn.max(r.ys[0], axis=2), tn.max(xs, axis=(0, 2), keepdims=True)]

    g = tn.trace(f, *arrays)
    c = tn.compile(g, backend="numba")
    assert c.report.kernel == WHOLE
    with np.errstate(invalid="ignore"):  # (the oracle's matmul meets the NaN / -inf rows)
        expected = interpret(g, *arrays)
    for a, b in zip(c(*arrays), expected):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(c(*arrays)[0][1:]).any() and not np.isnan(c(*arrays)[0][0]).any()
