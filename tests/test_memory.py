"""The buffer plan: no two simultaneously live values share a buffer, in-place only where the
overwritten value is dead, never into inputs or views; byte accounting; outputs owned by callers."""

import numpy as np
from lstm_fixture import lstm_graph
from plan_check import ANY_SIZE, check_plan

import tapernn as tn
from tapernn.interpret import interpret


def plan_of(graph, passes=None, options=ANY_SIZE):
    compiled = tn.compile(graph, passes=passes, options=options)
    return compiled, compiled.program.plan


def test_lstm_plan_is_safe_and_smaller(rng):
    g, _arrays = lstm_graph(5, 3, 4, 6)
    for passes in ([], None):
        compiled, plan = plan_of(g, passes)
        assert check_plan(compiled.graph, plan) > 0
        assert plan.stats.planned_bytes < plan.stats.naive_bytes
        assert plan.stats.peak_bytes <= plan.stats.naive_bytes
        assert compiled.report.planned_bytes == plan.stats.planned_bytes


def test_a_chain_runs_in_one_buffer():
    c = tn.compile(
        tn.trace(lambda x: tn.sum(tn.exp(tn.tanh(tn.sigmoid(x) * 2.0))), np.ones(8)), passes=[]
    )
    plan = c.program.plan
    assert len(plan.buffers) == 1 and len(plan.inplace) == 3  # mul, tanh, exp overwrite in turn
    np.testing.assert_allclose(c(np.ones(8)), 8 * np.exp(np.tanh(2 / (1 + np.exp(-1.0)))))


def test_no_inplace_into_a_value_read_later():
    def f(x):
        a = tn.tanh(x)
        b = tn.exp(a)  # a is still read below: exp must not overwrite it
        return tn.sum(a * b)

    c = tn.compile(tn.trace(f, np.ones(4)), passes=[])
    plan = c.program.plan
    exp = next(n for n in c.graph.nodes if n.op == "exp")
    assert exp not in plan.inplace
    x = np.linspace(-1, 1, 4)
    np.testing.assert_allclose(c(x), np.sum(np.tanh(x) * np.exp(np.tanh(x))))


def test_no_inplace_through_an_alias():
    def f(x):
        a = tn.tanh(x)
        return tn.sum(a + tn.transpose(a))  # the transpose is a view of a

    x = np.arange(9.0).reshape(3, 3) / 9
    c = tn.compile(tn.trace(f, x), passes=[])
    add = next(n for n in c.graph.nodes if n.op == "add")
    assert add not in c.program.plan.inplace
    np.testing.assert_allclose(c(x), np.sum(np.tanh(x) + np.tanh(x).T))


def test_inputs_are_never_written(rng):
    g, arrays = lstm_graph(3, 2, 3, 4)
    copies = [a.copy() for a in arrays]
    tn.compile(g)(*arrays)
    for a, b in zip(arrays, copies):
        np.testing.assert_array_equal(a, b)


def test_results_survive_the_next_call(rng):
    g, arrays = lstm_graph(3, 2, 3, 4)
    c = tn.compile(g)
    first = [np.array(o) for o in c(*arrays)]
    kept = c(*arrays)
    other = [a * 0.5 for a in arrays]
    c(*other)
    for a, b in zip(kept, first):
        np.testing.assert_array_equal(a, b)


def test_saved_for_backward_bytes():
    from tapernn.autodiff import split_forward_backward

    g, _arrays = lstm_graph(3, 2, 3, 4)
    joint = tn.compile(g, passes=[])
    fwd, _ = split_forward_backward(g, 1)
    saved = sum(fwd.outputs[k].nbytes for k in fwd.meta.saved_outputs)
    assert tn.compile(fwd, passes=[]).report.saved_for_backward_bytes == saved > 0
    assert joint.report.saved_for_backward_bytes > 0


def test_fused_temporaries_never_alias_live_values(rng):
    def f(x, y):
        a = tn.tanh(x * y + 1.0)
        b = tn.sigmoid(a * x - y)
        return tn.sum(b * a), tn.exp(a) @ tn.transpose(b)

    arrays = [rng.standard_normal((3, 3)) for _ in range(2)]
    c = tn.compile(tn.trace(f, *arrays))
    assert "fused" in c.graph.op_counts()
    check_plan(c.graph, c.program.plan)
    expected = interpret(tn.trace(f, *arrays), *arrays)
    for a, b in zip(c(*arrays), expected):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_a_buffer_read_through_several_views_is_freed_once():
    # concat(y[0], y[1]) reads y's buffer through two views; freeing it once per view put it in
    # the pool twice, and exp(s) and tanh(s) were then given the same buffer while both live
    def f(x):
        y = tn.tanh(x)
        s = tn.concat([y[0], y[1]], axis=0)
        a, b, c = tn.exp(s), tn.tanh(s), tn.sqrt(s * s)
        return tn.sum(a * b * c + s)

    x = np.random.default_rng(0).standard_normal((2, 3))
    compiled, plan = plan_of(tn.trace(f, x), passes=[])
    check_plan(compiled.graph, plan)
    y = np.tanh(x).reshape(-1)
    np.testing.assert_allclose(
        compiled(x), np.sum(np.exp(y) * np.tanh(y) * np.abs(y) + y), rtol=1e-12
    )


def test_concat_pieces_are_computed_into_their_slots():
    # computed pieces are written into the concat (out= a slice); inputs, a piece used twice and
    # a reshape of a value are handled too; both as a returned concat and as a temporary
    def f(x):
        a, b = tn.tanh(x), tn.exp(x)
        r = tn.reshape(tn.sigmoid(x) * 2.0, (3, 2))
        flat = tn.reshape(tn.tanh(tn.reshape(x, (6,))) * 3.0, (2, 3))  # a contiguous slot
        out = tn.concat([a, x, b, a, tn.transpose(r), flat], axis=0)  # 6 blocks of (2, 3)
        tmp = tn.concat([a * b, x], axis=1)
        return out, tn.sum(tmp * tmp, axis=1)

    x = np.random.default_rng(0).standard_normal((2, 3))
    compiled, plan = plan_of(tn.trace(f, x), passes=[])
    check_plan(compiled.graph, plan)
    assert len(plan.placed) == 3 and plan.placed_concats  # exp, tanh(...) * 3, a * b
    out_concat = compiled.graph.outputs[0]
    assert out_concat in plan.placed_concats and out_concat in plan.fresh
    ref = tn.compile(tn.trace(f, x), passes=[])
    for run in range(2):
        xs = x * (run + 1)
        a, b = np.tanh(xs), np.exp(xs)
        r = (1 / (1 + np.exp(-xs)) * 2.0).reshape(3, 2)
        flat = (np.tanh(xs.reshape(6)) * 3.0).reshape(2, 3)
        want = [
            np.concatenate([a, xs, b, a, r.T, flat], axis=0),
            np.sum(np.concatenate([a * b, xs], axis=1) ** 2, axis=1),
        ]
        for got, w in zip(compiled(xs), want):
            np.testing.assert_allclose(got, w, rtol=1e-12)
    first = compiled(x)
    kept = [np.array(o) for o in first]
    compiled(x * 3.0)
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)
    for got, w in zip(compiled(x), ref(x)):
        np.testing.assert_allclose(got, w, rtol=1e-12)


def test_the_report_holds_the_plan_record_and_a_pair_joins_two():
    # one typed record from the plan to the report (not copied field by field), and a training
    # pair's report adds kernels and bytes up from its two programs' records
    g, _ = lstm_graph(3, 2, 3, 4)
    c = tn.compile(g, passes=[])
    assert c.report.plan is c.program.plan.stats
    assert (c.report.kernels, c.report.planned_bytes) == (
        c.report.plan.kernels,
        c.report.plan.planned_bytes,
    )
    from tapernn.nn.state_grads import tap_copy_bytes

    seq = tn.nn.Sequencer(tn.nn.LSTM(3, 4))
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    seq.forward(x)
    seq.backward(x, np.ones((5, 2, 4)))
    exe = seq._runtime.last
    pair = exe.training_pair
    fwd, bwd, joint = (
        pair.forward.report.plan,
        pair.last_backward.report.plan,
        seq.compile_report().plan,
    )
    assert joint == tn.passes.PlanStats(
        fwd.kernels + bwd.kernels,
        fwd.naive_bytes + bwd.naive_bytes,
        fwd.planned_bytes + bwd.planned_bytes,  # the peak: the training loop's (see
        pair.step_peak_bytes(1, tap_copy_bytes(exe) + exe._update_bytes()),  # test_memory_loop)
        pair.saved_bytes,
    )
    assert joint.peak_bytes > max(fwd.peak_bytes, bwd.peak_bytes)
    assert seq.compile_report().resident_bytes == pair.resident_bytes > 0
    assert len(seq.compile_report().passes) == len(pair.forward.report.passes) * 2
