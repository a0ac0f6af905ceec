"""The VJP of scan (tapernn/scan_grad.py): float64 gradchecks of RNN, LSTM, GRU-like and random
bodies w.r.t. initial carries, xs and invariants (forward and reverse loops); the training graph
runs the forward loop once; compiled gradients equal the interpreter's to 1e-12."""

import numpy as np
import pytest
from scan_bodies import (
    gru_body,
    lstm_arrays,
    lstm_body,
    random_arrays,
    random_body,
    rnn_body,
    scanned,
)

import tapernn as tn
from tapernn.autodiff import split_forward_backward
from tapernn.interpret import interpret


def _rnn_arrays(rng, T=5, B=2, D=4, H=3):
    return [rng.standard_normal(s) for s in [(B, H), (T, B, D), (D, H), (H, H), (H,)]]


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_rnn_lstm_gru(reverse):
    rng = np.random.default_rng(0)
    assert tn.gradcheck(scanned(rnn_body(2, 4, 3), 1, 1, reverse=reverse), *_rnn_arrays(rng))
    assert tn.gradcheck(
        scanned(lstm_body(2, 3, 4), 2, 1, reverse=reverse), *lstm_arrays(rng, 4, 2, 3, 4)
    )
    garr = [rng.standard_normal(s) for s in [(2, 3), (4, 2, 5), (5, 9), (3, 6), (3, 3)]]
    assert tn.gradcheck(scanned(gru_body(2, 5, 3), 1, 1, reverse=reverse), *garr)


def test_gradcheck_random_bodies():
    rng = np.random.default_rng(1)
    for k in range(6):
        body, ops = random_body(rng)
        arrays = random_arrays(rng, 3)
        assert tn.gradcheck(scanned(body, 1, 1, reverse=k % 2 == 1), *arrays), ops


def test_gradcheck_a_gradient_that_flows_only_through_the_carry_and_invariants():
    """Only the final carry is read, xs are ints (not differentiable), and one invariant is
    read through a bool mask (a bool residual)."""
    body = tn.trace(
        lambda h, ids, w, v: [
            tn.where(tn.functional.greater(h, 0.0), h * v, h) + tn.embedding(w, ids)
        ],
        np.zeros((2, 3)),
        np.zeros(2, np.int64),
        np.zeros((4, 3)),
        np.zeros(3),
    )
    ids = np.array([[0, 3], [1, 1], [2, 0]])
    rng = np.random.default_rng(2)
    fn = lambda h, i, w, v: tn.scan(body, [h], [i], [w, v]).carries
    assert tn.gradcheck(
        fn, rng.standard_normal((2, 3)), ids, rng.standard_normal((4, 3)), rng.standard_normal(3)
    )


def _training(body, arrays, n_carry, reverse=False):
    def loss(*v):
        r = tn.scan(body, v[:n_carry], v[n_carry : n_carry + 1], v[n_carry + 1 :], reverse=reverse)
        return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(tn.tanh(r.carries[-1]))

    return tn.grad(tn.trace(loss, *arrays))


@pytest.mark.parametrize("reverse", [False, True])
def test_the_forward_loop_runs_once_in_a_training_graph(reverse):
    rng = np.random.default_rng(3)
    arrays = lstm_arrays(rng, 4, 2, 3, 4)
    body = lstm_body(2, 3, 4)
    joint = _training(body, arrays, 2, reverse)
    scans = [n for n in joint.nodes if n.op == "scan"]
    assert [n.attrs["reverse"] for n in scans] == [reverse, not reverse]
    fwd_scan = scans[0]
    ext = fwd_scan.attrs["body"]
    assert ext is not body and ext.inputs == body.inputs
    assert ext.outputs[: len(body.outputs)] == body.outputs and len(ext.outputs) > len(
        body.outputs
    )  # the body extended with the residuals
    fwd, bwd = split_forward_backward(joint, 1)
    assert fwd.op_counts()["scan"] == 1 and bwd.op_counts()["scan"] == 1
    assert next(n for n in fwd.nodes if n.op == "scan") is fwd_scan
    want = interpret(joint, *arrays)
    for passes in (None, []):
        got = tn.compile(joint, passes=passes)(*arrays)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(interpret(tn.unroll_scans(joint), *arrays), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_rolled_gradients_equal_the_unrolled_program():
    """The same loop written as a Python loop (one traced step per t) and as a scan."""
    rng = np.random.default_rng(4)
    arrays = _rnn_arrays(rng, T=6)

    def unrolled(h, xs, W, U, b):
        total = None
        for t in range(xs.shape[0]):
            h = tn.tanh(xs[t] @ W + h @ U + b)
            total = tn.sum(h * h) if total is None else total + tn.sum(h * h)
        return total

    body = rnn_body(2, 4, 3)

    def rolled(h, xs, W, U, b):
        return tn.sum(tn.scan(body, [h], [xs], [W, U, b]).ys[0] ** 2)

    a = tn.compile(tn.grad(tn.trace(unrolled, *arrays)))(*arrays)
    b = tn.compile(tn.grad(tn.trace(rolled, *arrays)))(*arrays)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_a_scan_read_other_than_through_its_views_keeps_one_forward_loop():
    body = rnn_body(2, 4, 3)
    arrays = _rnn_arrays(np.random.default_rng(5))

    def loss(h, xs, W, U, b):
        slab = tn.scan(body, [h], [xs], [W, U, b]).slab
        return tn.sum(slab * slab)

    joint = tn.grad(tn.trace(loss, *arrays))
    fwd, _ = split_forward_backward(joint, 1)
    assert fwd.op_counts()["scan"] == 1
    want = interpret(joint, *arrays)
    for a, b in zip(tn.compile(joint)(*arrays), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck_nested_scans_and_a_carry_passed_through():
    inner = tn.trace(
        lambda a, x, w: [tn.tanh(a * w + x), a * x], np.zeros(2), np.zeros(2), np.zeros(2)
    )

    def outer_step(s, x, w):
        r = tn.scan(inner, [s], [tn.stack([x, x * 2.0, x * 3.0])], [w])
        return [r.carries[0], r.ys[0]]

    outer = tn.trace(outer_step, np.zeros(2), np.zeros(2), np.zeros(2))
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal(2), rng.standard_normal((3, 2)), rng.standard_normal(2)]
    fn = scanned(outer, 1, 1)
    assert tn.gradcheck(fn, *arrays)
    joint = tn.grad(tn.trace(lambda *v: tn.add_n([tn.sum(o) for o in fn(*v)]), *arrays))
    want = interpret(joint, *arrays)
    for unroll in (False, True):
        for a, b in zip(tn.compile(joint, unroll=unroll)(*arrays), want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    body = tn.trace(
        lambda c, k, x: [c, k + tn.sum(c * x), c * x], np.zeros(2), np.zeros(()), np.zeros(2)
    )
    assert tn.gradcheck(
        scanned(body, 2, 1), rng.standard_normal(2), np.array(0.5), rng.standard_normal((4, 2))
    )


def test_float32_training_graph_and_a_gradient_for_some_inputs_only():
    rng = np.random.default_rng(7)
    arrays = lstm_arrays(rng, 6, 3, 4, 5, np.float32)
    body = lstm_body(3, 4, 5, np.float32)
    graph = tn.trace(lambda *v: tn.sum(scanned(body, 2, 1)(*v)[2] ** 2), *arrays)
    joint = tn.grad(graph)
    rolled, unrolled = tn.compile(joint)(*arrays), tn.compile(joint, unroll=True)(*arrays)
    for a, b in zip(rolled, unrolled):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    some = tn.grad(graph, wrt=[4])  # U only: the carries' cotangents still flow back in time
    got = tn.compile(some)(*arrays)
    np.testing.assert_allclose(got[1], rolled[5], rtol=2e-5, atol=2e-5)
    scans = [n for n in some.nodes if n.op == "scan" and n.attrs["reverse"]]
    assert (
        len(scans) == 1
        and scans[0].shape[0]
        < next(n for n in joint.nodes if n.op == "scan" and n.attrs["reverse"]).shape[0]
    )


@pytest.mark.parametrize("reverse", [False, True])
def test_carry_residuals_come_from_the_ys_of_the_step_before(reverse):
    """An LSTM's h and c are carries and ys: the backward's h_{t-1}, c_{t-1} are read from the
    ys shifted by one step (the initial carry first), not written again per step; T = 1 and 2
    are the boundary cases."""
    body = lstm_body(2, 3, 4)
    for T in (1, 2, 5):
        arrays = lstm_arrays(np.random.default_rng(T), T, 2, 3, 4)
        assert tn.gradcheck(scanned(body, 2, 1, reverse=reverse), *arrays)
    joint = _training(body, arrays, 2, reverse)
    ext = next(n for n in joint.nodes if n.op == "scan").attrs["body"]
    saved = ext.outputs[len(body.outputs) :]
    assert body.inputs[0] not in saved and body.inputs[1] not in saved
    assert not any(o.op == "input" for o in saved)
