"""The rolled peephole LSTM at small sizes (issue 16's (1, 5, 5) target): the peephole weights'
gradients are one product of stacks after the reverse loop (push_out_grads "sum_mul"), the four
gates' xs are one xs and their recurrent weights one invariant (merge_xs.py), the column sums
after the loop one per slab block (merge_sums.py). By structure, against the reference
interpreter (the passes alone), and end to end against the NumPy equations
(tests/cell_reference.py) at 1e-12 in float64 on both backends."""

import numpy as np
import pytest
from cell_reference import lstm_step
from pass_check import assert_same
from test_rolled_numpy import TOL, cs_grads, params, steps, train, twins

import tapernn as tn
from tapernn import nn
from tapernn import passes as P
from tapernn.passes.merge_sums import merge_column_sums
from tapernn.passes.merge_xs import merge_gate_xs

T, B, H = 5, 1, 5


def _scans(graph, reverse):
    return [n for n in graph.nodes if n.op == "scan" and n.attrs["reverse"] == reverse]


def _trained(make):
    rolled, unrolled = twins(lambda: nn.Sequencer(make()))
    rng = np.random.default_rng(5)
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    return rolled, unrolled, x, g


def test_the_peephole_gradients_are_no_per_step_work(backend):
    rolled, _, x, g = _trained(lambda: nn.LSTM(H, H))
    train(rolled, x, g)
    bwd = rolled._runtime.last.training_pair.backward.graph
    (loop,) = _scans(bwd, True)
    body = loop.attrs["body"]
    # per step: dz_i, dz_f, dz_g, dz_o (the weight GEMMs' operands) and the carried dh, dc;
    # no (B, H) row of dz_k * c per peephole (3 more before), no (H,) peephole carry
    ys = [o.shape for o in body.outputs[loop.attrs["n_carry"] :]]
    assert sum(int(np.prod(s)) for s in ys) == 4 * B * H, ys
    assert [o.shape for o in body.outputs[: loop.attrs["n_carry"]]] == [(B, H), (B, H)]
    # after the loop: one sum for the four bias gradients, one for the three peephole ones
    sums = [n for n in bwd.nodes if n.op == "sum" and n.step is None]
    # (the three peephole products stacked along a new leading axis: contiguous blocks the
    # planner computes them into, then one (3, H) sum)
    assert sorted(n.shape for n in sums) == [(3, H), (4 * H,)], [n.shape for n in sums]


def test_the_forward_loop_adds_one_gate_block_per_step(backend):
    rolled, _, x, g = _trained(lambda: nn.LSTM(H, H))
    train(rolled, x, g)
    fwd = rolled._runtime.last.training_pair.forward
    (loop,) = _scans(fwd.graph, False)
    a, body = loop.attrs, loop.attrs["body"]
    xs = body.inputs[a["n_carry"] : a["n_carry"] + a["n_xs"]]
    assert [i.shape for i in xs] == [(B, 4 * H)]  # the four gates' x @ W_xk + b_k: one xs
    # the four W_hk^T: one (H, 4H) invariant (a view of the parameters outside), no other matrix
    mats = [i.shape for i in body.inputs[a["n_carry"] + a["n_xs"] :] if len(i.shape) == 2]
    assert mats == [(H, 4 * H)], mats
    # compiled: one (B, 4H) add of the xs row and h @ [W_hi W_hf W_hg W_ho] per step
    assert not any(n.op == "concat" and n.ndim == 3 for n in fwd.graph.nodes)  # (one add)
    runner = next(v for k, v in fwd.program.bound.items() if k.startswith("scan_run"))
    if backend == "numpy":
        step = runner.source.split("try:\n", 1)[1].split("except", 1)[0]
        adds = [line for line in step.splitlines() if "np_add(a2," in line]
        assert len(adds) == 1, step
        assert "_pre(" not in runner.source  # no per-call concat of the weights
        bwd = rolled._runtime.last.training_pair.backward.program
        back = next(v for k, v in bwd.bound.items() if k.startswith("scan_run"))
        assert "_pre(" not in back.source  # dh = [dz_i ... dz_o] @ [W_hi; ...]: a view too


def _lstm_scan_graph(B, H, D=3):
    """A hand-built peephole LSTM over tn.scan (per-gate weights as separate arrays, as the
    cell has them) and its gradient graph: the passes' own test case, no nn module."""

    def step(h, c, x, Wi, Wf, Wg, Wo, Ui, Uf, Ug, Uo, bi, bf, bg, bo, pi, pf, po):
        i = tn.sigmoid(x @ Wi + bi + h @ Ui + pi * c)
        f = tn.sigmoid(x @ Wf + bf + h @ Uf + pf * c)
        gg = tn.tanh(x @ Wg + bg + h @ Ug)
        c2 = f * c + i * gg
        o = tn.sigmoid(x @ Wo + bo + h @ Uo + po * c2)
        h2 = o * tn.tanh(c2)
        return [h2, c2, h2]

    z = np.zeros
    shapes = [(B, H), (B, H), (B, D)] + [(D, H)] * 4 + [(H, H)] * 4 + [(H,)] * 7
    body = tn.trace(step, *[z(s) for s in shapes])
    rng = np.random.default_rng(7)
    U = rng.standard_normal((4 * H, H)) * 0.5  # the U_k: adjacent row blocks of one array
    arrays = [
        rng.standard_normal((B, H)),
        rng.standard_normal((B, H)),
        rng.standard_normal((T, B, D)),
        *[rng.standard_normal((D, H)) for _ in range(4)],
        U,
        *[rng.standard_normal(H) for _ in range(7)],
    ]

    def loss(h, c, xs, W0, W1, W2, W3, U, *vecs):
        Us = [U[k * H : (k + 1) * H] for k in range(4)]
        r = tn.scan(body, [h, c], [xs], [W0, W1, W2, W3, *Us, *vecs])
        return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(r.carries[1])

    return tn.grad(tn.trace(loss, *arrays)), arrays


@pytest.mark.parametrize("batch", [1, 2])
def test_the_passes_keep_values_against_the_interpreter(batch):
    joint, arrays = _lstm_scan_graph(batch, H)
    pushed = assert_same(joint, [P.push_out_of_loops], arrays)
    back = [n for n in pushed.nodes if n.op == "scan" and n.attrs["reverse"]]
    (loop,) = back
    # the three peephole sums left the loop: products of stacks summed after it
    assert loop.attrs["n_carry"] == 2
    after = [
        n
        for n in pushed.nodes
        if n.op == "sum" and n.shape == (H,) and n.inputs[0].op == "mul" and n.inputs[0].ndim == 3
    ]
    assert len(after) == 3, [n.shape for n in after]
    merged = assert_same(pushed, [merge_gate_xs], arrays)
    fwd = [n for n in merged.nodes if n.op == "scan" and not n.attrs["reverse"]]
    assert fwd and all(n.attrs["n_xs"] == 1 for n in fwd)
    assert fwd[0].inputs[2].shape == (T, batch, 4 * H)
    summed = assert_same(merged, [merge_column_sums], arrays)
    assert summed is not merged
    out = assert_same(joint, P.DEFAULT, arrays)
    # after gate fusion the merged xs [x @ W_k + b_k]_k is one add on the fused GEMM's block
    (loop,) = [n for n in out.nodes if n.op == "scan" and not n.attrs["reverse"]]
    xs = loop.inputs[loop.attrs["n_carry"]]
    assert xs.op == "reshape" and xs.inputs[0].op == "add", (xs.op, xs.inputs[0].op)


@pytest.mark.parametrize("cell", ["LSTM", "LSTM(peephole=False)", "FastLSTM", "GRU"])
def test_rolled_small_cells_equal_numpy_equations(cell, backend):
    make = {
        "LSTM": lambda: nn.LSTM(H, H),
        "LSTM(peephole=False)": lambda: nn.LSTM(H, H, peephole=False),
        "FastLSTM": lambda: nn.FastLSTM(H, H),
        "GRU": lambda: nn.GRU(H, H),
    }[cell]
    rolled, unrolled, x, g = _trained(make)
    got, want_u = train(rolled, x, g), train(unrolled, x, g)
    for u, v in zip(got[:2], want_u[:2]):
        np.testing.assert_allclose(u, v, **TOL)
    for k in got[2]:
        np.testing.assert_allclose(got[2][k], want_u[2][k], **TOL, err_msg=k)
    if cell != "LSTM":
        return
    p = params(rolled.module)

    def f(arr):
        state = (np.zeros((B, H)), np.zeros((B, H)))
        return steps(lstm_step, {k: arr[k] for k in p}, arr["input"], state)[0]

    arrays = dict(p, input=x)
    grads = cs_grads(f, arrays, g)
    np.testing.assert_allclose(got[0], f(arrays), **TOL)
    np.testing.assert_allclose(got[1], grads["input"], **TOL)
    for k in p:
        np.testing.assert_allclose(got[2][f"0.{k}"], grads[k], **TOL, err_msg=k)


@pytest.mark.skipif(not tn.backends.numba_available(), reason="numba not installed")
def test_sum_mul_runs_in_a_numba_whole_program_kernel(monkeypatch):
    """The peephole gradients as sum_mul nodes (push_out_grads, the product's array not made:
    at large sizes; forced here at (1, 5, 5)) lower into numba's whole-program backward kernel
    (loop_source.reduce_sum), which agrees with the NumPy backend at 1e-12 in float64."""
    from tapernn.nn.runtime import runtime_of
    from tapernn.passes import push_out_grads

    monkeypatch.setattr(push_out_grads, "SUM_MUL_MIN_BYTES", [0])
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    got = {}
    for backend in ("numpy", "numba"):
        tn.manual_seed(7)
        seq = nn.Sequencer(nn.LSTM(H, H)).set_plan_options(tn.PlanOptions(backend=backend))
        for _ in range(3):  # (past the switch call when kernels compile in the background)
            y = seq.forward(x)
            gx = seq.backward(x, g)
        pair = runtime_of(seq).history[-1].exe.compile_training()
        bwd = pair.last_backward or pair.backward
        assert [n.shape for n in bwd.graph.nodes if n.op == "sum_mul"] == [(H,)] * 3
        if backend == "numba":
            assert hasattr(bwd.program.fn, "work"), "no whole-program backward kernel"
        got[backend] = [y.copy(), gx.copy()] + [p.grad.copy() for p in seq.parameters()]
    for a, b in zip(got["numpy"], got["numba"]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
