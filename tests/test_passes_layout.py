"""Layout passes: view simplification, shared gradient stacks, per-step sums -- structure on
small graphs and on the cells' backward programs, values equal to no passes at 1e-12."""

import numpy as np
from pass_check import assert_same, randn

import tapernn as tn
from tapernn import passes as P
from tapernn import tracing


def default_equals_no_passes(m, x, g):
    """A training step of `m` under DEFAULT equals one under no passes (outputs, input and
    parameter gradients, 1e-12); returns DEFAULT's backward graph."""
    results = {}
    for name, passes in (("none", []), ("default", None)):
        m.set_passes(passes)
        m.zero_grad_parameters()
        y = np.array(m.forward(x))
        gx = np.array(m.backward(x, g))
        results[name] = [y, gx] + [p.grad.copy() for p in m.parameters()]
    for a, b in zip(results["default"], results["none"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    return m._runtime.last.training_pair.backward.graph


def test_simplify_views_composes_slices_transposes_and_reshapes(rng):
    def f(x):
        a = x[1:5][:, 2:6]  # one slice x[1:5, 2:6]
        b = tn.transpose(tn.transpose(x, (1, 0)), (1, 0))  # no transpose at all
        c = tn.reshape(tn.reshape(x, (4, 12)), (8, 6))  # one reshape
        return tn.sum(tn.tanh(a)) + tn.sum(b * b) + tn.sum(c * c)

    arrays = [randn(rng, 6, 8)]
    g = tn.trace(f, *arrays)
    before = g.op_counts()
    assert before["getitem"] == 2 and before["transpose"] == 2 and before["reshape"] == 2
    out = assert_same(g, [P.simplify_views], arrays)
    counts = out.op_counts()
    assert counts["getitem"] == 1 and "transpose" not in counts and counts["reshape"] == 1
    sl = next(n for n in out.nodes if n.op == "getitem")
    assert sl.inputs[0].op == "input" and sl.shape == (4, 4)
    rs = next(n for n in out.nodes if n.op == "reshape")
    assert rs.inputs[0].op == "input" and rs.shape == (8, 6)
    assert_same(tn.grad(g), [P.simplify_views], arrays)  # and the gradient agrees


def test_simplify_views_turns_tiling_slice_gradients_into_one_concat(rng):
    def f(x):  # the gradient of x is add_n of three index_grads tiling its columns
        return tn.sum(tn.tanh(x[:, :2])) + tn.sum(tn.sigmoid(x[:, 2:5])) + tn.sum(x[:, 5:] ** 2)

    arrays = [randn(rng, 3, 7)]
    g = tn.grad(tn.trace(f, *arrays))
    assert g.op_counts()["index_grad"] == 3
    out = assert_same(g, [P.simplify_views], arrays)
    counts = out.op_counts()
    assert "index_grad" not in counts and "add_n" not in counts
    (cat,) = [n for n in out.nodes if n.op == "concat"]
    assert cat.shape == (3, 7) and cat.attrs["axis"] == 1 and cat in out.outputs


def test_simplify_views_keeps_gradients_that_do_not_tile(rng):
    def f(x):  # columns 2..4 get no gradient: scatter-add into zeros must stay
        return tn.sum(tn.tanh(x[:, :2])) + tn.sum(x[:, 4:] ** 2)

    arrays = [randn(rng, 3, 7)]
    out = assert_same(tn.grad(tn.trace(f, *arrays)), [P.simplify_views], arrays)
    assert out.op_counts()["index_grad"] == 2 and "concat" not in out.op_counts()


def test_peephole_bias_sums_share_the_gate_gradient_stack():
    # the bias gradients are column sums of the dz_k stacks; the peephole gradients column sums of
    # dz_k * c stacks. Grouped by first use they interleaved ([dz_i dz_f dz_i*c ...]) and the
    # (T*B, 7H) stack copied every dz_t next to the (T*B, 4H) one the weight GEMMs read
    from tapernn import nn

    T, B, H = 4, 3, 5
    m = nn.Sequencer(nn.LSTM(H, H), unroll=True).astype(np.float64)  # the unrolled layout
    rng = np.random.default_rng(0)
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(k).standard_normal(p.data.shape) * 0.3
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    bwd = default_equals_no_passes(m, x, g)
    sums = [n for n in bwd.nodes if n.op == "sum" and n.inputs[0].op == "concat"]
    widths = sorted(n.shape[0] for n in sums)
    assert widths == [3 * H, 4 * H]  # peephole stack apart; no 7H stack
    bias_stack = next(n.inputs[0] for n in sums if n.shape[0] == 4 * H)
    assert any(n.op == "matmul" and bias_stack in n.inputs for n in bwd.nodes)  # shared


def test_share_stacks_makes_runs_and_their_stacks_views(rng):
    # per step [a b] (a run of [a b c]) and stacks over steps of [a b], [a b c] and c: after the
    # pass only [a b c]_t and its stack are concatenated, the rest are views of them
    def f(x, w2, w3, w1):
        runs, wides, cs = [], [], []
        for t in range(3):
            with tracing.step(t):
                a, b, c = tn.tanh(x[t]), tn.exp(x[t] * 0.5), x[t] * x[t]
                runs.append(tn.concat([a, b], axis=1))
                wides.append(tn.concat([a, b, c], axis=1))
                cs.append(c)
        total = tn.sum(tn.concat(runs, axis=0) @ w2) + tn.sum(tn.concat(wides, axis=0) @ w3)
        total = total + tn.sum(tn.concat(cs, axis=0) @ w1)
        return total + tn.sum(runs[1] * wides[1][:, :4])

    arrays = [randn(rng, 3, 2, 2), randn(rng, 4, 3), randn(rng, 6, 3), randn(rng, 2, 3)]
    g = tn.trace(f, *arrays)
    out = assert_same(g, [P.share_stacks], arrays)
    concats = [n for n in out.nodes if n.op == "concat"]
    assert sorted(n.shape for n in concats) == [(2, 6)] * 3 + [(6, 6)]
    views = [n for n in out.nodes if n.op == "getitem" and n.inputs[0].op == "concat"]
    assert {n.shape for n in views} >= {(2, 4), (6, 4), (6, 2)}
    grads = tn.grad(g)
    assert_same(grads, [P.share_stacks], arrays)  # and the gradient graph stays acyclic


def test_gru_backward_keeps_one_gate_gradient_stack():
    from tapernn import nn

    T, B, H = 4, 3, 5
    m = nn.Sequencer(nn.GRU(H, H), unroll=True).astype(np.float64)  # the unrolled layout
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(k).standard_normal(p.data.shape) * 0.3
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    bwd = default_equals_no_passes(m, x, g)
    stacks = [
        n
        for n in bwd.nodes
        if n.op == "concat"
        and n.attrs["axis"] == 0
        and n.shape[0] == T * B
        and n.inputs[0].op == "concat"
    ]
    assert [n.shape for n in stacks] == [(T * B, 3 * H)]  # [dz_r dz_z dz_n]_t only
    per_step = [
        n for n in bwd.nodes if n.op == "concat" and n.attrs["axis"] == 1 and n.step is not None
    ]
    assert {n.shape for n in per_step} == {(B, 3 * H)}  # [dz_r dz_z]_t: views of those


# ---- summing within steps ---------------------------------------------------------------------------


def _stacked_products(T, rows, cols, also_read=False):
    def f(a, b):
        products = []
        for t in range(T):
            with tracing.step(t):
                products.append((tn.tanh(a[t]) * b[t], a[t] * b[t]))
        pieces = []
        for t, (u, v) in enumerate(products):  # joined late on the tape, as fuse_row_sums does
            with tracing.step(t):
                pieces.append(tn.concat([u, v], axis=1))
        stack = tn.concat(pieces, axis=0)
        total = tn.sum(stack, axis=0)
        return [total, stack * 2.0] if also_read else total

    return f


def test_sum_within_steps_sums_each_step_where_it_is_made(rng):
    T, rows, cols = 5, 64, 20  # a (320, 40) float64 stack: 100 KiB, above MIN_STACK_BYTES
    arrays = [randn(rng, T, rows, cols), randn(rng, T, rows, cols)]
    g = tn.trace(_stacked_products(T, rows, cols), *arrays)
    out = assert_same(g, [P.sum_within_steps], arrays)
    stacks = [n for n in out.nodes if n.op == "concat" and n.attrs["axis"] == 0]
    assert [n.shape for n in stacks] == [(T, 2 * cols)]  # T rows, not T * rows
    row_sums = stacks[0].inputs
    assert all(r.op == "sum" and r.attrs["keepdims"] and r.shape == (1, 2 * cols) for r in row_sums)
    # each step's piece and row sum come before the next step's work: no product outlives
    # its step (the pieces were joined after the last step)
    pos = {n: k for k, n in enumerate(out.nodes)}
    assert [r.step for r in row_sums] == list(range(T))
    for t, r in enumerate(row_sums[:-1]):
        assert pos[r] == pos[r.inputs[0]] + 1
        assert pos[r] < min(pos[n] for n in out.nodes if n.step == t + 1 and n.op == "tanh")
    assert_same(tn.grad(g), [P.sum_within_steps], arrays + [randn(rng, 2 * cols)])


def test_sum_within_steps_leaves_shared_and_small_stacks(rng):
    T, rows, cols = 5, 64, 20
    arrays = [randn(rng, T, rows, cols), randn(rng, T, rows, cols)]
    g = tn.trace(_stacked_products(T, rows, cols, also_read=True), *arrays)
    assert assert_same(g, [P.sum_within_steps], arrays) is g  # the stack is read twice
    small = [randn(rng, T, 4, 3), randn(rng, T, 4, 3)]
    g = tn.trace(_stacked_products(T, 4, 3), *small)
    assert assert_same(g, [P.sum_within_steps], small) is g
