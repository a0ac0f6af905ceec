"""Each pass: structure on a small printed graph, and values (outputs and gradients) equal
before and after to 1e-12 in float64; then the whole DEFAULT pipeline on a hand-written LSTM."""

import numpy as np
import pytest
from lstm_fixture import lstm_graph
from pass_check import assert_same, randn, run

import tapernn as tn
from tapernn import passes as P
from tapernn import tracing
from tapernn.interpret import interpret

# ---- dead code, CSE, folding, zeros --------------------------------------------------------------


def test_dead_code_is_removed_but_inputs_stay(rng):
    def f(x, y):
        tn.exp(y)  # unused
        return tn.tanh(x)

    g = tn.trace(f, randn(rng, 3), randn(rng, 3))
    out = assert_same(g, [P.eliminate_dead_code], [randn(rng, 3), randn(rng, 3)])
    assert "exp" not in out.op_counts() and len(out.inputs) == 2


def test_cse_merges_equal_nodes_and_constants_not_inputs(rng):
    def f(x, y, z):
        return tn.tanh(x) * 2.0 + tn.tanh(x) * 2.0 + y * z + z * 3.0 + y

    arrays = [randn(rng, 3) for _ in range(3)]
    g = tn.trace(f, *arrays)
    assert g.op_counts()["tanh"] == 2 and g.op_counts()["constant"] == 3
    out = assert_same(g, [P.eliminate_common_subexpressions], arrays)
    counts = out.op_counts()
    assert counts["tanh"] == 1 and counts["mul"] == 3  # 2*tanh once, y*z, z*3
    assert counts["constant"] == 2 and counts["input"] == 3


def test_fold_constants_small_only(rng):
    small, big = np.linspace(0, 1, 6), np.linspace(0, 1, 5000)
    g = tn.trace(
        lambda x, y: (x * tn.exp(tracing.as_var(small, x)), y + tn.exp(tracing.as_var(big, y))),
        randn(rng, 6),
        randn(rng, 5000),
    )
    arrays = [randn(rng, 6), randn(rng, 5000)]
    out = assert_same(g, [P.fold_constants], arrays)
    assert out.op_counts()["exp"] == 1  # the 5000-element one stays a runtime op


def test_known_zeros_propagate(rng):
    def f(x, w):
        z = tn.zeros((3, 4))
        a = tn.tanh(x @ w) + z @ tn.transpose(w) @ w  # z @ ... is zero
        zero_sum = tn.broadcast_to(tn.sum(z, axis=0), (3, 4))
        b = tn.add_n([a, ((z @ tn.transpose(w)) * x) @ w, zero_sum])
        return b - tn.concat([z[:1], z[1:]], axis=0)

    arrays = [randn(rng, 3, 5), randn(rng, 5, 4)]
    g = tn.trace(f, *arrays)
    out = assert_same(g, [P.propagate_zeros, P.eliminate_dead_code], arrays)
    assert out.op_counts() == {"input": 2, "matmul": 1, "tanh": 1}


def test_known_zero_keeps_the_dtype(rng):
    ids = np.arange(3)
    g = tn.trace(lambda i: i + tn.zeros((3,)), ids)
    out = assert_same(g, [P.propagate_zeros, P.eliminate_dead_code], [ids])
    assert out.outputs[0].dtype == np.float64 and out.op_counts()["cast"] == 1


def test_specialize_seeds_to_zeros_folds_the_backward(rng):
    """An acceptor: only the last step's output has a gradient; the others' seeds are zero."""
    T = 4

    def f(x, w, h):
        outs = []
        for t in range(T):
            with tracing.step(t):
                h = tn.tanh(x[t] @ w + h)
                outs.append(h)
        return outs

    arrays = [randn(rng, T, 2, 3), randn(rng, 3, 3), randn(rng, 2, 3)]
    g = tn.grad(tn.trace(f, *arrays))
    seeds = [f"grad_out{t}" for t in range(T - 1)]
    spec = P.specialize_inputs(g, {s: "zeros" for s in seeds})
    last_seed = randn(rng, 2, 3)
    zero_seeds = [np.zeros((2, 3))] * (T - 1)
    full = arrays + zero_seeds + [last_seed]
    expected = run(g, [], full)
    got = run(spec, [], full)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert [n.name for n in spec.inputs] == [n.name for n in g.inputs]  # same calling convention
    backward = lambda gr: sum(1 for n in gr.nodes if n.phase == "backward" and n.op != "input")
    assert backward(spec) <= backward(g) - (T - 1)
    # h_t's cotangent was seed_t + (from step t+1): with seed_t zero nothing is accumulated
    assert spec.op_counts()["add_n"] == g.op_counts()["add_n"] - (T - 1)


# ---- gate fusion ---------------------------------------------------------------------------


def test_gate_fusion_concats_weights_and_slices(rng):
    def f(x, wi, wf, wo):
        return tn.sigmoid(x @ wi) * tn.tanh(x @ wf) + x @ tn.transpose(wo)

    arrays = [randn(rng, 2, 3), randn(rng, 3, 4), randn(rng, 3, 4), randn(rng, 4, 3)]
    g = tn.grad(tn.trace(lambda *a: tn.sum(f(*a)), *arrays))
    assert g.op_counts()["matmul"] == 9
    fwd = tn.trace(f, *arrays)
    out = assert_same(fwd, [P.fuse_gates, P.eliminate_dead_code], arrays)
    mm = [n for n in out.nodes if n.op == "matmul"]
    assert len(mm) == 1 and mm[0].shape == (2, 12) and mm[0].inputs[1].op == "concat"
    assert out.op_counts()["getitem"] == 3
    full = assert_same(g, P.DEFAULT, arrays)  # gradients agree too
    assert full.op_counts()["matmul"] < 9


def test_gate_fusion_dual_sums_of_products_become_one(rng):
    def f(g1, g2, w1, w2):
        return g1 @ tn.transpose(w1) + g2 @ tn.transpose(w2)

    arrays = [randn(rng, 2, 4), randn(rng, 2, 5), randn(rng, 3, 4), randn(rng, 3, 5)]
    g = tn.trace(
        lambda *a: tn.add_n([a[0] @ tn.transpose(a[2]), a[1] @ tn.transpose(a[3])]), *arrays
    )
    out = assert_same(g, [P.fuse_gates, P.eliminate_dead_code], arrays)
    assert out.op_counts()["matmul"] == 1
    mm = next(n for n in out.nodes if n.op == "matmul")
    assert mm.inputs[0].shape == (2, 9) and mm.inputs[1].op == "transpose"  # of concat(w1, w2)


def test_gate_fusion_keeps_step_and_scope(rng):
    def f(x, wi, wf):
        with tracing.step(3), tracing.scope("cell"):
            return tn.tanh(x @ wi) + x @ wf

    arrays = [randn(rng, 2, 3), randn(rng, 3, 4), randn(rng, 3, 4)]
    out, _ = P.run_passes(tn.trace(f, *arrays), [P.fuse_gates])
    mm = next(n for n in out.nodes if n.op == "matmul")
    assert (mm.step, mm.scope) == (3, "cell")
    concat = mm.inputs[1]
    assert concat.step is None  # the weight concat serves every step: loop-level


# ---- hoisting across time ----------------------------------------------------------------------


def rnn_loss(x, w, u, h):
    total = None
    for t in range(x.shape[0]):
        with tracing.step(t):
            h = tn.tanh(x[t] @ w + h @ u)
            term = tn.sum(h * h)
            total = term if total is None else total + term
    return total


@pytest.mark.parametrize("T", [2, 5])
def test_hoisting_makes_one_input_projection_and_one_weight_gradient(rng, T):
    arrays = [randn(rng, T, 3, 4), randn(rng, 4, 5), randn(rng, 5, 5) * 0.3, randn(rng, 3, 5)]
    g = tn.grad(tn.trace(rnn_loss, *arrays))
    out = assert_same(
        g,
        [P.eliminate_common_subexpressions, P.hoist_across_time, P.eliminate_common_subexpressions],
        arrays,
    )
    mms = [n for n in out.nodes if n.op == "matmul"]
    by_shape = {}
    for n in mms:
        by_shape.setdefault(n.shape, []).append(n)
    assert len(by_shape[(T * 3, 5)]) == 1  # x_t @ W for every t: one (T*B, H) product
    proj = by_shape[(T * 3, 5)][0]
    assert proj.step is None and proj.inputs[0].op == "reshape"  # x itself, no copy
    assert len(by_shape[(4, 5)]) == 1  # dW = X^T dZ: one matmul
    assert (3, 4) not in by_shape and len(by_shape[(T * 3, 4)]) == 1  # dx: one matmul
    assert len(by_shape[(3, 5)]) == 2 * T  # only the recurrence stays per step: h @ U, dz @ U^T


def test_hoisting_stacks_separate_per_step_inputs_of_any_batch(rng):
    def f(w, u, h, *xs):
        total = None
        for t, x in enumerate(xs):
            with tracing.step(t):
                y = tn.tanh(x @ w + tn.sum(h @ u, axis=0))
                h = tn.sum(y, axis=0, keepdims=True) * 0.1 + h
                total = tn.sum(y * y) if total is None else total + tn.sum(y * y)
        return total

    xs = [randn(rng, k + 1, 3) for k in range(4)]  # ragged: 1, 2, 3, 4 rows
    arrays = [randn(rng, 3, 5), randn(rng, 5, 5), randn(rng, 1, 5)] + xs
    out = assert_same(tn.grad(tn.trace(f, *arrays)), P.DEFAULT, arrays)
    mms = [n for n in out.nodes if n.op == "matmul"]
    assert [n.shape for n in mms].count((10, 5)) == 1  # one projection of all 10 rows
    per_step_x = set(out.inputs[3:])
    assert not any(n.inputs[0] in per_step_x for n in mms)  # no per-step x_t @ W is left
    assert not any(
        n.inputs[0].op == "transpose" and n.inputs[0].inputs[0] in per_step_x for n in mms
    )  # nor a per-step x_t^T dz_t for dW


def test_hoisting_never_hoists_the_recurrence(rng):
    arrays = [randn(rng, 4, 3, 5), randn(rng, 5, 5), randn(rng, 5, 5) * 0.3, randn(rng, 3, 5)]
    g = tn.trace(lambda x, w, u, h: rnn_loss(x, w, u, h), *arrays)
    out = assert_same(g, [P.hoist_across_time, P.eliminate_dead_code], arrays)
    per_step = sorted(n.step for n in out.nodes if n.op == "matmul" and n.step is not None)
    assert per_step == [0, 1, 2, 3]  # h_t @ U needs h_{t-1}: one per step
    assert [n.shape for n in out.nodes if n.op == "matmul" and n.step is None] == [(12, 5)]


# ---- elementwise fusion ------------------------------------------------------------------------


def test_elementwise_fusion_groups_chains_and_keeps_shared_values_out(rng):
    def f(x, y, b):
        a = x * y + b  # broadcast bias inside the group
        s = tn.sigmoid(a)
        shared = tn.tanh(a)  # `a` has three readers, all inside the group
        return s * shared - a, tn.exp(x) @ tn.transpose(y)

    arrays = [randn(rng, 3, 4), randn(rng, 3, 4), randn(rng, 4)]
    g = tn.trace(f, *arrays)
    out = assert_same(g, [P.fuse_elementwise, P.eliminate_dead_code], arrays)
    counts = out.op_counts()
    assert counts["fused"] == 1 and counts["exp"] == 1  # exp feeds a matmul: a group of one
    fused = next(n for n in out.nodes if n.op == "fused")
    ops = [ins[0] for ins in fused.attrs["program"]]
    assert sorted(ops) == sorted(["mul", "add", "sigmoid", "tanh", "mul", "sub"])
    c = tn.compile(g)
    assert c.report.fused_groups and len(c.report.fused_groups[0]) == 6


def test_elementwise_fusion_stays_inside_one_step(rng):
    def f(x):
        with tracing.step(0):
            a = tn.tanh(x) * 2.0
        with tracing.step(1):
            return tn.exp(a) + 1.0

    out = assert_same(tn.trace(f, randn(rng, 3)), [P.fuse_elementwise], [randn(rng, 3)])
    fused = [n for n in out.nodes if n.op == "fused"]
    assert sorted(n.step for n in fused) == [0, 1]


def test_elementwise_fusion_does_not_absorb_values_read_outside(rng):
    def f(x):
        a = tn.tanh(x)
        return tn.exp(a) + 1.0, a @ tn.transpose(a)

    out = assert_same(tn.trace(f, randn(rng, 2, 2)), [P.fuse_elementwise], [randn(rng, 2, 2)])
    fused = next(n for n in out.nodes if n.op == "fused")
    assert "tanh" not in [ins[0] for ins in fused.attrs["program"]]


# ---- the pipeline on a per-gate LSTM -----------------------------------------------------------


@pytest.mark.parametrize("T", [3, 6])
def test_lstm_runs_like_a_fused_hoisted_lstm(T):
    B, I, H = 2, 3, 4
    g, arrays = lstm_graph(T, B, I, H, seed=T)
    assert g.op_counts()["matmul"] == 8 * T * 3  # per gate: x@W, h@U; backward twice as many
    c = tn.compile(g)
    expected = interpret(g, *arrays)
    for a, b in zip(c(*arrays), expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    mms = [n for n in c.graph.nodes if n.op == "matmul"]
    projection = [n for n in mms if n.shape == (T * B, 4 * H)]
    assert len(projection) == 1 and projection[0].inputs[0].op == "reshape"
    recurrent = [n for n in mms if n.shape == (B, 4 * H)]
    assert len(recurrent) == T  # h_t @ [U_i U_f U_o U_g], one per step
    # forward 1 + T; backward: T for dh, one each for dx, dW_x, dW_h
    assert len(mms) == 2 * T + 4
    assert c.report.fused_groups
    assert c.report.planned_bytes < c.report.naive_bytes
    assert c.report.kernels < len(g.nodes) // 2
    names = [p.name for p in c.report.passes]
    assert names == [getattr(p, "__name__", "") for p in P.DEFAULT]
    assert str(c.report).count("\n") > len(P.DEFAULT)


def test_pass_pipeline_keeps_every_step_tag(rng):
    g, _arrays = lstm_graph(3, 2, 3, 4)
    out, _ = P.run_passes(g, P.DEFAULT)
    steps = {n.step for n in out.nodes}
    assert {0, 1, 2} <= steps
    assert {n.phase for n in out.nodes} == {"forward", "backward"}


def test_optimised_graph_grows_linearly_with_steps():
    """Per step the same work remains (compile-time scaling is measured in tools/)."""
    sizes = [len(P.run_passes(lstm_graph(T, 2, 3, 4)[0], P.DEFAULT)[0].nodes) for T in (4, 8, 12)]
    assert sizes[2] - sizes[1] == sizes[1] - sizes[0]


def test_per_gate_lstm_compiles_like_the_fused_weight_lstm():
    from lstm_fixture import fast_lstm_graph

    per_gate = tn.compile(lstm_graph(5, 2, 3, 4)[0])
    fast = tn.compile(fast_lstm_graph(5, 2, 3, 4)[0])
    assert fast.graph.op_counts()["matmul"] == per_gate.graph.op_counts()["matmul"]
    # per step the same or less work; once per call the weight concats (and gradient slices)
    per_step = [
        tn.compile(build(T, 2, 3, 4)[0]).report.kernels
        for build in (lstm_graph, fast_lstm_graph)
        for T in (5, 6)
    ]
    assert per_step[1] - per_step[0] <= per_step[3] - per_step[2]
    # FastLSTM's split-gradient scatter became one concat per step (index_grads_to_concat),
    # which the per-gate LSTM never needed: the fused-weight model gained 15 kernels here
    assert per_gate.report.kernels <= fast.report.kernels + 16
    _g, arrays = lstm_graph(5, 2, 3, 4)
    _fg, fast_arrays = fast_lstm_graph(5, 2, 3, 4)
    np.testing.assert_allclose(per_gate(*arrays)[0], fast(*fast_arrays)[0], rtol=1e-12)


def test_batching_sliced_elementwise_work_on_gate_blocks(rng):
    def f(x, w, b1, b2):
        z = x @ w  # (2, 8): two gate blocks of 4 columns
        return tn.sigmoid(z[:, :4] + b1) * tn.sigmoid(z[:, 4:] + b2)

    arrays = [randn(rng, 2, 3), randn(rng, 3, 8), randn(rng, 4), randn(rng, 4)]
    g = tn.trace(f, *arrays)
    passes = [P.batch_sliced_elementwise, P.batch_sliced_elementwise, P.eliminate_dead_code]
    out = assert_same(g, passes, arrays)
    counts = out.op_counts()
    assert counts["add"] == 1 and counts["sigmoid"] == 1 and counts["concat"] == 1
    add = next(n for n in out.nodes if n.op == "add")
    assert add.shape == (2, 8) and add.inputs[1].op == "concat"  # [b1 b2], loop-level
    assert add.inputs[1].step is None


def test_batching_needs_adjacent_blocks(rng):
    def f(x, w):
        z = x @ w
        return tn.tanh(z[:, :2]) + tn.tanh(z[:, 4:6])  # a gap: columns 2..4 are not computed

    arrays = [randn(rng, 2, 3), randn(rng, 3, 8)]
    out = assert_same(tn.trace(f, *arrays), [P.batch_sliced_elementwise], arrays)
    assert out.op_counts()["tanh"] == 2


def test_training_report_labels_each_pass_with_its_program():
    from tapernn import nn

    seq = nn.Sequencer(nn.LSTM(3, 4))
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    seq.forward(x)
    seq.backward(x, np.ones((4, 2, 4)))
    report = seq.compile_report()
    programs = [p.program for p in report.passes]
    n = len(tn.passes.default_passes())
    assert programs == ["forward"] * n + ["backward"] * n
    lines = str(report).splitlines()
    assert lines[0].split()[:2] == ["program", "pass"]
    assert lines[1].startswith("forward") and lines[n + 1].startswith("backward")
