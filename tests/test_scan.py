"""The scan node (issue 16): the builder and the reference interpreter against NumPy equations
written in tests/scan_bodies.py, `unroll_scans` and `inline`, and bad inputs."""

import numpy as np
import pytest
from scan_bodies import lstm_arrays, lstm_body, lstm_numpy, rnn_body, rnn_numpy, scanned

import tapernn as tn
from tapernn.interpret import interpret


def _rnn_arrays(rng, T, B, D, H, dtype):
    return [
        a.astype(dtype)
        for a in (
            rng.standard_normal((B, H)),
            rng.standard_normal((T, B, D)),
            rng.standard_normal((D, H)) / np.sqrt(D),
            rng.standard_normal((H, H)) / np.sqrt(H),
            rng.standard_normal(H) * 0.1,
        )
    ]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_scan_matches_numpy_and_unrolled(dtype, tol, reverse):
    rng = np.random.default_rng(0)
    arrays = _rnn_arrays(rng, 6, 3, 4, 5, dtype)
    g = tn.trace(scanned(rnn_body(3, 4, 5, dtype), 1, 1, reverse=reverse), *arrays)
    assert [n.op for n in g.nodes].count("scan") == 1
    h, ys = rnn_numpy(*arrays, reverse=reverse)
    got = interpret(g, *arrays)
    assert got[0].dtype == dtype and got[1].shape == (6, 3, 5)
    np.testing.assert_allclose(got[0], h, rtol=tol, atol=tol)
    np.testing.assert_allclose(got[1], ys, rtol=tol, atol=tol)
    unrolled = tn.unroll_scans(g)
    assert "scan" not in unrolled.op_counts() and unrolled.steps() == list(range(6))
    unrolled.verify()
    for a, b in zip(interpret(unrolled, *arrays), got):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_lstm_scan_matches_numpy(dtype, tol):
    rng = np.random.default_rng(1)
    arrays = lstm_arrays(rng, 7, 2, 3, 4, dtype)
    g = tn.trace(scanned(lstm_body(2, 3, 4, dtype), 2, 1), *arrays)
    want = lstm_numpy(*arrays)
    got = interpret(g, *arrays)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for a, b in zip(interpret(tn.unroll_scans(g), *arrays), want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_slab_layout_is_the_contract():
    rng = np.random.default_rng(2)
    arrays = lstm_arrays(rng, 3, 2, 3, 4)
    body = lstm_body(2, 3, 4)
    g = tn.trace(lambda *v: tn.scan(body, v[:2], v[2:3], v[3:]).slab, *arrays)
    slab = interpret(g, *arrays)[0]
    h, c, hs, cs = lstm_numpy(*arrays)
    assert slab.shape == (16 + 3 * 16,)
    np.testing.assert_allclose(slab[:16], np.concatenate([h.ravel(), c.ravel()]), atol=1e-12)
    rows = slab[16:].reshape(3, 16)
    for t in range(3):
        np.testing.assert_allclose(
            rows[t], np.concatenate([hs[t].ravel(), cs[t].ravel()]), atol=1e-12
        )


def test_scan_without_xs_takes_length_and_nested_scans_unroll():
    inner = tn.trace(lambda a, w: [a * w + 1.0, a], np.zeros(2), np.zeros(2))

    def outer_step(s, w):
        r = tn.scan(inner, [s], [], [w], length=3)
        return [r.carries[0], r.ys[0]]

    outer = tn.trace(outer_step, np.zeros(2), np.zeros(2))
    g = tn.trace(
        lambda s, w: (
            tn.scan(outer, [s], [], [w], length=2).carries
            + [tn.scan(outer, [s], [], [w], length=2).ys[0]]
        ),
        np.ones(2),
        np.ones(2),
    )
    s, w = np.array([0.5, -1.0]), np.array([2.0, 0.5])
    want_s, want_ys = s.copy(), []
    for _ in range(2):
        inner_ys = []
        for _ in range(3):
            inner_ys.append(want_s.copy())
            want_s = want_s * w + 1.0
        want_ys.append(np.array(inner_ys))
    got = interpret(g, s, w)
    np.testing.assert_allclose(got[0], want_s, atol=1e-12)
    np.testing.assert_allclose(got[1], np.array(want_ys), atol=1e-12)
    flat = tn.unroll_scans(g)
    assert "scan" not in flat.op_counts()
    for a, b in zip(interpret(flat, s, w), got):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_inline_replays_the_body_with_step_and_scope():
    body = rnn_body(2, 3, 4)

    def fn(h, x, W, U, b):
        with tn.tracing.scope("cell"):
            return tn.inline(body, [h, x, W, U, b], step=5)[0]

    arrays = _rnn_arrays(np.random.default_rng(3), 1, 2, 3, 4, np.float64)
    arrays[1] = arrays[1][0]
    g = tn.trace(fn, *arrays)
    ops = [n for n in g.nodes if n.op not in ("input", "constant")]
    assert ops and all(n.step == 5 and n.scope == "cell" for n in ops)
    h = rnn_numpy(arrays[0], arrays[1][None], *arrays[2:])[0]
    np.testing.assert_allclose(interpret(g, *arrays)[0], h, atol=1e-12)


# ---- bad inputs ----------------------------------------------------------------------------------


def _trace_bad(fn, *arrays):
    return tn.trace(fn, *arrays)


def test_wrong_carry_shape_names_the_carry():
    body = rnn_body(2, 3, 4)
    arrays = _rnn_arrays(np.random.default_rng(0), 5, 2, 3, 4, np.float64)
    arrays[0] = np.zeros((2, 5))
    with pytest.raises(
        tn.ShapeError,
        match=r"initial carry 0 \(body input 'h'\).*\(2, 4\).*"
        r"\(2, 5\)",
    ):
        _trace_bad(scanned(body, 1, 1), *arrays)


def test_body_whose_carry_changes_shape_is_refused():
    body = tn.trace(lambda h, x: [tn.concat([h, x]), h], np.zeros(2), np.zeros(2))
    with pytest.raises(
        tn.ShapeError,
        match=r"carry 0 \('x0'\) enters the body as \(2,\).*"
        r"returns it as \(4,\)",
    ):
        _trace_bad(scanned(body, 1, 1), np.zeros(2), np.zeros((3, 2)))


def test_mixed_dtypes_are_refused():
    body = tn.trace(lambda h, x: [h, tn.cast(x, np.float32)], np.zeros(2), np.zeros(2))
    with pytest.raises(tn.TracingError, match="one floating-point dtype.*float64.*float32"):
        _trace_bad(scanned(body, 1, 1), np.zeros(2), np.zeros((3, 2)))
    body64 = rnn_body(2, 3, 4)
    arrays = _rnn_arrays(np.random.default_rng(0), 5, 2, 3, 4, np.float64)
    arrays[2] = arrays[2].astype(np.float32)
    with pytest.raises(tn.DTypeError, match=r"invariant 0 \(body input 'W'\).*float64.*float32"):
        _trace_bad(scanned(body64, 1, 1), *arrays)


def test_xs_of_different_lengths_are_refused():
    body = tn.trace(lambda h, x, y: [h + x * y, h], np.zeros(2), np.zeros(2), np.zeros(2))
    with pytest.raises(tn.ShapeError, match=r"same length.*\[3, 4\]"):
        _trace_bad(scanned(body, 1, 2), np.zeros(2), np.zeros((3, 2)), np.zeros((4, 2)))


def test_wrong_input_counts_and_missing_length():
    body = rnn_body(2, 3, 4)
    with pytest.raises(tn.ShapeError, match="takes 5 inputs, got 1 carries \\+ 1 xs \\+ 0"):
        _trace_bad(lambda h, x: tn.scan(body, [h], [x]).ys, np.zeros((2, 4)), np.zeros((3, 2, 3)))
    lone = tn.trace(lambda h: [h * 2.0], np.zeros(2))
    with pytest.raises(tn.ArgumentError, match="length="):
        _trace_bad(lambda h: tn.scan(lone, [h]).carries, np.zeros(2))
    with pytest.raises(tn.ArgumentTypeError, match="list of Vars"):
        _trace_bad(lambda h: tn.scan(lone, h, length=2).carries, np.zeros(2))
    with pytest.raises(tn.ArgumentTypeError, match="Graph"):
        _trace_bad(lambda h: tn.scan(lambda v: v, [h], length=2).carries, np.zeros(2))


def test_verify_checks_a_scan_node_against_its_body():
    body = rnn_body(2, 3, 4)
    arrays = _rnn_arrays(np.random.default_rng(0), 5, 2, 3, 4, np.float64)
    g = tn.trace(scanned(body, 1, 1), *arrays)
    node = next(n for n in g.nodes if n.op == "scan")
    bad = node.replace(attrs={**node.attrs, "length": 4})
    g2 = g.rebuild(lambda n, m: bad if n is node else None)
    with pytest.raises(
        tn.GraphError,
        match=r"xs 0 \(body input 'x'\): expected shape "
        r"\(4, 2, 3\), got \(5, 2, 3\)",
    ):
        g2.verify()


def test_compile_runs_a_scan_and_unroll_true_compiles_the_steps():
    rng = np.random.default_rng(4)
    arrays = lstm_arrays(rng, 5, 2, 3, 4)
    g = tn.trace(scanned(lstm_body(2, 3, 4), 2, 1), *arrays)
    want = lstm_numpy(*arrays)
    rolled, unrolled = tn.compile(g), tn.compile(g, unroll=True)
    assert "scan" in rolled.graph.op_counts() and "scan" not in unrolled.graph.op_counts()
    for c in (rolled, unrolled):
        for a, b in zip(c(*arrays), want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
