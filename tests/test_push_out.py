"""The scan push-out pass (passes/push_out.py, push_out_grads.py): by structure (the input
projection is one GEMM over the (T*B, D) view outside the loop; the weight-gradient GEMMs come
after the reverse loop) and against the reference interpreter on LSTM and random bodies."""

import numpy as np
import pytest
from pass_check import assert_same
from scan_bodies import gru_body, lstm_arrays, lstm_body, random_arrays, random_body, scanned

import tapernn as tn
from tapernn import passes as P
from tapernn.scan_run import COMPILES

T, B, D, H = 5, 2, 3, 4


def _scan_nodes(g):
    return [n for n in g.nodes if n.op == "scan"]


def _lstm_loss(body):
    def loss(*v):
        r = tn.scan(body, v[:2], v[2:3], v[3:])
        return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(r.carries[1])

    return loss


def test_the_input_projection_leaves_the_loop_as_one_gemm():
    arrays = lstm_arrays(np.random.default_rng(0), T, B, D, H)
    g = tn.trace(scanned(lstm_body(B, D, H), 2, 1), *arrays)
    out = assert_same(g, [P.push_out_of_loops], arrays)
    (s,) = _scan_nodes(out)
    outside = [n for n in out.nodes if n.op == "matmul"]
    assert len(outside) == 1 and outside[0].inputs[0].shape == (T * B, D)
    assert outside[0].inputs[0].inputs[0] is out.inputs[2]  # the stacked xs, reshaped
    body = s.attrs["body"]
    inner = [n for n in body.nodes if n.op == "matmul"]
    assert len(inner) == 1 and inner[0].inputs[0] is body.inputs[0]  # h @ U only
    assert s.attrs["n_xs"] == 1 and s.inputs[2].shape == (T, B, 4 * H)
    assert P.push_out_of_loops(out) is out  # nothing left to push: the graph unchanged


def test_weight_gradient_gemms_come_after_the_reverse_loop():
    arrays = lstm_arrays(np.random.default_rng(1), T, B, D, H)
    joint = tn.grad(tn.trace(_lstm_loss(lstm_body(B, D, H)), *arrays))
    out = assert_same(joint, [P.push_out_of_loops], arrays)
    back = next(s for s in _scan_nodes(out) if s.attrs["reverse"])
    body = back.attrs["body"]
    # the W, U, b accumulators leave the loop (no carry, no slab space): dh, dc are carried
    assert back.attrs["n_carry"] == 2
    assert [i.shape for i in body.inputs[:2]] == [(B, H), (B, H)]
    assert [o.shape for o in body.outputs[:2]] == [(B, H), (B, H)]
    assert not any(n.op == "matmul" and n.shape in ((D, 4 * H), (H, 4 * H)) for n in body.nodes)
    # dx_t = dz_t @ W^T is one GEMM after the loop too: only dh = dz @ U^T stays inside
    (inner,) = [n for n in body.nodes if n.op == "matmul"]
    assert inner.shape == (B, H)
    assert any(n.op == "matmul" and n.shape == (T * B, D) for n in out.nodes)
    after = {n.shape: n for n in out.nodes if n.op == "matmul" and n.phase == "backward"}
    dw, du = after[(D, 4 * H)], after[(H, 4 * H)]
    assert dw.inputs[0].shape == (D, T * B) and du.inputs[0].shape == (H, T * B)
    assert any(
        n.op == "sum" and n.shape == (4 * H,) and n.inputs[0].shape == (T, B, 4 * H)
        for n in out.nodes
    )
    assert_same(joint, P.DEFAULT, arrays)


@pytest.mark.parametrize("reverse", [False, True])
def test_random_bodies_and_their_gradients_keep_their_values(reverse):
    rng = np.random.default_rng(2)
    for _ in range(6):
        body, _ops = random_body(rng)
        arrays = random_arrays(rng, 4)
        g = tn.trace(scanned(body, 1, 1, reverse=reverse), *arrays)
        assert_same(g, [P.push_out_of_loops], arrays)
        loss = tn.trace(
            lambda *v, body=body: tn.sum(
                tn.tanh(tn.add_n(scanned(body, 1, 1, reverse=reverse)(*v)[1:2]))
            ),
            *arrays,
        )
        assert_same(tn.grad(loss), [P.push_out_of_loops], arrays)
        assert_same(tn.grad(loss), P.DEFAULT, arrays)


def test_gru_training_graph_keeps_its_values():
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s) for s in [(B, H), (T, B, D), (D, 3 * H), (H, 2 * H), (H, H)]]
    body = gru_body(B, D, H)
    loss = tn.trace(lambda *v: tn.sum(scanned(body, 1, 1)(*v)[1] ** 2), *arrays)
    joint = tn.grad(loss)
    out = assert_same(joint, P.DEFAULT, arrays)
    fwd = next(s for s in _scan_nodes(out) if not s.attrs["reverse"])
    assert not any(
        n.op == "matmul" and n.inputs[0] is fwd.attrs["body"].inputs[1]
        for n in fwd.attrs["body"].nodes
    )  # x_t @ W left the loop


def test_pushed_bodies_are_compiled_once_across_compiles():
    arrays = lstm_arrays(np.random.default_rng(4), T, B, D, H)
    joint = tn.grad(tn.trace(_lstm_loss(lstm_body(B, D, H)), *arrays))
    first = tn.compile(joint)
    before = COMPILES[0]
    second = tn.compile(joint)
    assert COMPILES[0] == before
    for a, b in zip(first(*arrays), second(*arrays)):
        np.testing.assert_array_equal(a, b)


def test_a_returned_output_projection_is_one_gemm_after_the_loop():
    def step(h, x, W, U, V):
        h2 = tn.tanh(x @ W + h @ U)
        return [h2, h2 @ V]

    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(s) for s in [(B, H), (T, B, D), (D, H), (H, H), (H, 6)]]
    body = tn.trace(step, *[a[0] if k == 1 else a for k, a in enumerate(arrays)])
    g = tn.trace(scanned(body, 1, 1), *arrays)
    out = assert_same(g, [P.push_out_of_loops], arrays)
    (s,) = _scan_nodes(out)
    assert [n.shape for n in s.attrs["body"].nodes if n.op == "matmul"] == [(B, H)]
    assert any(n.op == "matmul" and n.shape == (T * B, 6) for n in out.nodes)
    joint = tn.grad(tn.trace(lambda *v: tn.sum(tn.tanh(scanned(body, 1, 1)(*v)[1])), *arrays))
    assert_same(joint, P.DEFAULT, arrays)


def test_an_accumulation_read_inside_the_loop_stays_in_the_loop():
    """acc' = acc + x_t^T x_t also read by a ys (the running sum per step, or a function of
    it): pushing the sum out would leave those reading a never-updated acc."""

    def running(acc, x, w):
        new = acc + tn.transpose(x) @ (x @ w)
        return [new, new]

    def through(acc, x, w):
        new = acc + tn.transpose(x) @ x
        return [new, tn.tanh(new) * w]

    rng = np.random.default_rng(8)
    arrays = [
        rng.standard_normal((3, 3)),
        rng.standard_normal((4, 2, 3)),
        rng.standard_normal((3, 3)),
    ]
    for step in (running, through):
        body = tn.trace(step, np.zeros((3, 3)), np.zeros((2, 3)), np.zeros((3, 3)))
        g = tn.trace(scanned(body, 1, 1), *arrays)
        assert_same(g, [P.push_out_of_loops], arrays)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_returned_sum_of_products_leaves_the_loop(reverse):
    """ys y_t = q1_t @ W1 + q2_t @ W2^T (an LSTM's dx_t = sum over gates of dz_g,t @ W_g^T)
    whose q's the loop returns anyway: a sum of GEMMs over the stacked q's after the loop, no
    product left in the body; values == the interpreter."""

    def step(h, x, U, W1, W2):
        h2 = tn.tanh(x + h @ U)
        q1, q2 = h2 * 2.0, tn.sigmoid(h2)
        return [h2, q1, q2, q1 @ W1 + q2 @ tn.transpose(W2, (1, 0)), h2]

    z = np.zeros
    body = tn.trace(step, z((B, H)), z((B, H)), z((H, H)), z((H, D)), z((D, H)))

    def loop(h, xs, U, W1, W2):
        r = tn.scan(body, [h], [xs], [U, W1, W2], reverse=reverse)
        return [r.carries[0], *r.ys]

    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(s) for s in [(B, H), (T, B, H), (H, H), (H, D), (D, H)]]
    out = assert_same(tn.trace(loop, *arrays), [P.push_out_of_loops], arrays)
    (s,) = _scan_nodes(out)
    inner = [n for n in s.attrs["body"].nodes if n.op == "matmul"]
    assert len(inner) == 1 and inner[0].shape == (B, H)  # h @ U only
    assert any(n.op == "matmul" and n.shape == (T * B, D) for n in out.nodes)


def test_peephole_sums_of_a_gemms_column_slices_leave_the_loop():
    """A coupled-gate LSTM's gates are column slices `z[..., a:b]` of one GEMM whose gradient
    (a sum of index_grads, stored for dW) holds every gate's dz: the peephole gradients
    sum_t sum_b dz_t * c_t read its columns after the loop, no (H,) carry stays in the reverse
    loop (the batch split needs every carry to have the batch rows)."""

    def step(h, c, x, w, u, p_f, p_o):
        z = x @ w + h @ u
        f = tn.sigmoid(z[..., :H] + p_f * c)
        o = tn.sigmoid(z[..., 2 * H :] + p_o * c)
        c2 = f * c + (1 - f) * tn.tanh(z[..., H : 2 * H])
        h2 = o * tn.tanh(c2)
        return [h2, c2, h2]

    rng = np.random.default_rng(7)
    shapes = [(B, H), (B, H), (B, D), (D, 3 * H), (H, 3 * H), (H,), (H,)]
    body = tn.trace(step, *[np.zeros(s) for s in shapes])

    def loss(*v):
        r = tn.scan(body, v[:2], v[2:3], v[3:])
        return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(r.carries[1])

    arrays = [rng.standard_normal(s) for s in shapes[:2] + [(T, B, D)] + shapes[3:]]
    joint = tn.grad(tn.trace(loss, *arrays))
    out = assert_same(joint, [P.push_out_of_loops], arrays)
    back = next(s for s in _scan_nodes(out) if s.attrs["reverse"])
    carries = back.attrs["body"].inputs[: back.attrs["n_carry"]]
    assert [i.shape for i in carries] == [(B, H), (B, H)]
    sums = [n for n in out.nodes if n.op in ("sum", "sum_mul") and n.shape == (H,)]
    read = [i for n in sums for i in (n.inputs if n.op == "sum_mul" else n.inputs[0].inputs)]
    full = ("s", None, None, None)
    columns = [
        i.attrs["index"] for i in read if i.op == "getitem" and i.attrs["index"][:2] == (full, full)
    ]
    assert len(sums) == 2 and {(0, H), (2 * H, 3 * H)} <= {c[2][1:3] for c in columns}
    assert_same(joint, P.DEFAULT, arrays)
