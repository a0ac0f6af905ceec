"""Region planning on real recurrent models: gate activations computed in place over the hoisted
input projection (and saved from there), concat pieces computed into their slots, returned
arrays never overwritten by later runs; values and gradients equal to the planner without
regions (float64, 1e-12)."""

import numpy as np
import pytest
from plan_check import ANY_SIZE, check_plan

from tapernn import PlanOptions, memory, nn
from tapernn import regions as tn_regions
from tapernn.ops.registry import get_op

MODELS = {
    "FastLSTM": lambda H: nn.FastLSTM(H, H),
    "LSTM(np)": lambda H: nn.LSTM(H, H, peephole=False),
    "LSTM": lambda H: nn.LSTM(H, H),
    "GRU": lambda H: nn.GRU(H, H),
}


def train_step(make, x, g, regions, options=ANY_SIZE, seed=0):
    from dataclasses import replace

    np.random.seed(seed)
    # the planner of the unrolled program (a rolled one plans the loop body: tests/test_rolled)
    m = nn.Sequencer(make(x.shape[2]), unroll=True).astype(np.float64)
    m.set_plan_options(replace(options, regions=regions))
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(k).standard_normal(p.data.shape) * 0.3
    y = np.array(m.forward(x))
    gx = np.array(m.backward(x, g))
    return m, y, gx, [p.grad.copy() for p in m.parameters()]


@pytest.mark.parametrize("name", list(MODELS))
def test_values_and_gradients_equal_the_planner_without_regions(name):
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 4))
    _, y0, gx0, grads0 = train_step(MODELS[name], x, g, False)
    m, y1, gx1, grads1 = train_step(MODELS[name], x, g, True)
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads1, grads0):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    pair = m._runtime.last.training_pair
    for program in (pair.forward, pair.backward):
        check_plan(program.graph, program.program.plan)


def _view_of_matmul(node):
    while get_op(node.op).view:
        node = node.inputs[0]
    return node.op == "matmul"


def _trained_fastlstm(monkeypatch):
    """Sequencer(FastLSTM) after one training step on T=6, B=3, H=4 (the regions planner)."""
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((6, 3, 4)), rng.standard_normal((6, 3, 4))
    return train_step(MODELS["FastLSTM"], x, g, True)[0]


def test_gates_are_computed_in_place_over_the_hoisted_projection(monkeypatch):
    m = _trained_fastlstm(monkeypatch)
    fwd = m._runtime.last.training_pair.forward
    plan = fwd.program.plan
    projection = next(n for n in fwd.graph.nodes if n.op == "matmul" and n.step is None)
    assert projection in plan.fresh  # the saved gates live in it: allocated per call
    over = [n for n, i in plan.inplace.items() if _view_of_matmul(i)]
    assert len({n.step for n in over}) == 6  # every step's pre-activations, in its rows
    saved = fwd.graph.outputs[len(fwd.graph.outputs) - m._runtime.last.training_pair.n_saved :]
    gates = [o for o in saved if o.op in ("sigmoid", "tanh") and plan.storage[o] is projection]
    assert len(gates) >= 2 * 6  # sigmoid(i), sigmoid([f o]) and tanh(g) saved from the rows
    # the step's h is computed into its slot of the returned sequence
    out = fwd.graph.outputs[0]
    assert out in plan.placed_concats and plan.storage[out] is out
    assert sum(1 for q, (r, _) in plan.placed.items() if r is out) == 6
    # forward peak: the saved values, the output and a few per-step temporaries
    stats = plan.stats
    assert stats.peak_bytes <= stats.saved_for_backward_bytes + out.nbytes + 16 * 3 * 4 * 8


def test_backward_gate_gradients_are_computed_into_the_stack(monkeypatch):
    m = _trained_fastlstm(monkeypatch)
    bwd = m._runtime.last.training_pair.backward
    plan = bwd.program.plan
    stacks = [c for c in plan.placed_concats if c not in plan.placed and c.shape[0] == 6 * 3]
    assert stacks, "the (T*B, 4H) stack of dz_t is built in place"
    nested = [q for q, (r, _) in plan.placed.items() if r is stacks[0]]
    assert len(nested) >= 6 * 4  # each step's [dz_i dz_f dz_o dz_g] pieces
    concat_kernels = sum(1 for n in bwd.graph.nodes if n.op == "concat") - len(
        [
            c
            for c in plan.placed_concats
            if all((c, j) in plan.placed_slots for j in range(len(c.inputs)))
        ]
    )
    computed = sum(1 for n in bwd.graph.nodes if n.op not in ("input", "constant"))
    assert plan.stats.kernels == computed - (
        sum(1 for n in bwd.graph.nodes if n.op == "concat") - concat_kernels
    )


@pytest.mark.parametrize("name", ["FastLSTM", "GRU"])
def test_returned_arrays_survive_backward_and_the_next_forward(name):
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 3))
    m, *_ = train_step(MODELS[name], x, g, True)
    pair = m._runtime.last.training_pair
    y = m.forward(x)
    args = m._runtime.last.bind([x])
    outs = pair.forward.run(args)
    kept = [np.array(o) for o in outs]
    kept_y = np.array(y)
    grads = pair.run_backward(pair.saved(outs), args, [g])
    kept_grads = [np.array(a) for a in grads]
    pair.forward.run(m._runtime.last.bind([x * 0.5 + 1.0]))  # a second forward, other data
    pair.run_backward(pair.saved(outs), args, [g * 2.0])
    m.forward(x * -1.0)
    for a, b in zip(outs, kept):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(y, kept_y)
    for a, b in zip(grads, kept_grads):
        np.testing.assert_array_equal(a, b)


def test_training_pair_programs_share_one_arena(monkeypatch):
    from tapernn.arena import arena_layout
    from tapernn.executor import compile

    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 4))
    m, *_ = train_step(MODELS["LSTM(np)"], x, g, True)
    pair = m._runtime.last.training_pair
    fwd, bwd = pair.forward, pair.backward
    arena = fwd.program.arrays[0].base
    while arena.base is not None:
        arena = arena.base
    assert (
        arena.nbytes
        == fwd.report.arena_bytes
        == max(arena_layout(p.program.plan.buffers)[1] for p in (fwd, bwd))
    )
    for p in (fwd, bwd):
        assert all(np.shares_memory(a, arena) for a in p.program.arrays)
    fresh = fwd.program.plan.per_call_bytes + bwd.program.plan.per_call_bytes
    assert (
        pair.resident_bytes
        == fwd.report.resident_bytes
        == bwd.report.resident_bytes
        == arena.nbytes + fresh
        < fwd.report.planned_bytes + bwd.report.planned_bytes
    )
    assert m._runtime.last.report().resident_bytes == pair.resident_bytes
    # the same graphs compiled apart (own buffers each) give the same numbers, run alternately
    apart = [compile(fwd.graph, passes=[]), compile(bwd.graph, passes=[])]
    for data in (x, x * 0.5 - 1.0, x):
        args = m._runtime.last.bind([data])
        outs, outs_apart = fwd.run(args), apart[0].run(args)
        grads = pair.run_backward(pair.saved(outs), args, [g])
        grads_apart = apart[1].run(pair.saved(outs_apart) + [g] + [args[k] for k in pair.reads])
        for a, b in zip(list(outs) + list(grads), list(outs_apart) + list(grads_apart)):
            np.testing.assert_array_equal(a, b)


def test_small_models_keep_contiguous_regions(monkeypatch):
    # default limits: a small model's gates are not written into strided columns (per-row ufunc
    # overhead), only contiguous regions (a step's rows) are; large storages get strided ones
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((6, 3, 4)), rng.standard_normal((6, 3, 4))
    _, *before = train_step(MODELS["FastLSTM"], x, g, False, PlanOptions())
    m, *after = train_step(MODELS["FastLSTM"], x, g, True, PlanOptions())
    for a, b in zip([after[0], after[1]] + after[2], [before[0], before[1]] + before[2]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    pair = m._runtime.last.training_pair
    for program in (pair.forward, pair.backward):
        plan, regions = program.program.plan, {}
        check_plan(program.graph, plan, regions)
        for n in list(plan.inplace) + list(plan.placed):
            assert regions[n].flags.c_contiguous, n
    fwd = pair.forward.program.plan
    assert any(_view_of_matmul(i) for i in fwd.inplace.values())  # rows: still in place
    default = PlanOptions()
    assert tn_regions.cheap_strides(np.empty((32, 1024), np.float32)[:, 256:512], 6 << 20, default)
    assert not tn_regions.cheap_strides(
        np.empty((32, 512), np.float32)[:, 128:256], 6 << 20, default
    )
    assert not tn_regions.cheap_strides(
        np.empty((32, 1024), np.float32)[:, 256:512], 1 << 19, default
    )


def test_saved_gates_take_strided_columns_from_shorter_runs(monkeypatch):
    # a value returned by the forward (a gate saved for backward) goes into strided columns
    # of the projection from ESCAPING_MIN_RUN elements per row on; values that stay inside a
    # program (the backward's dz pieces) keep STRIDED_MIN_RUN. Peephole LSTM: its i, f and o
    # gates are one column block each (H = 4 here)
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((6, 3, 4)), rng.standard_normal((6, 3, 4))
    _, *before = train_step(MODELS["LSTM"], x, g, False)
    peaks = {}
    for run in (256, 4):
        options = PlanOptions(strided_min_bytes=0, strided_min_run=256, escaping_min_run=run)
        m, *after = train_step(MODELS["LSTM"], x, g, True, options)
        for a, b in zip([after[0], after[1]] + after[2], [before[0], before[1]] + before[2]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        pair = m._runtime.last.training_pair
        strided = {}
        for name, program in (("fwd", pair.forward), ("bwd", pair.backward)):
            plan, regions = program.program.plan, {}
            check_plan(program.graph, plan, regions)
            strided[name] = [
                n
                for n in list(plan.inplace) + list(plan.placed)
                if not regions[n].flags.c_contiguous
            ]
        assert not strided["bwd"]
        root = memory.storage_roots(pair.forward.graph)
        returned = {root[o] for o in pair.forward.graph.outputs}  # itself or through views
        assert all(n in returned for n in strided["fwd"])
        if run == 4:
            # i, f, o of steps 1..5 (at step 0, c_0 = 0 folds the peephole terms away)
            assert sum(n.op == "fused" for n in strided["fwd"]) >= 3 * 5
        else:
            assert not strided["fwd"]
        peaks[run] = pair.forward.report.peak_bytes
    assert peaks[4] <= peaks[256] - 2 * 6 * 3 * 4 * 8  # two T-stacks fewer
    big = np.empty((32, 512), np.float32)[:, 128:256]
    assert tn_regions.cheap_strides(big, 6 << 20, PlanOptions(), escaping=True)
    assert not tn_regions.cheap_strides(big, 6 << 20, PlanOptions())


def test_step_input_fields_are_views_of_the_callers_input(monkeypatch):
    # a Sequencer's inner module sees x[t] as its `inputs[t]`, as in Torch: a view of the
    # caller's array, not a copy (T*B*D bytes per call); other outputs aliasing inputs are copied
    rng = np.random.default_rng(4)
    x, g = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 4))
    for regions in (True, False):
        m, *_ = train_step(MODELS["FastLSTM"], x, g, regions)
        y = m.forward(x)
        inner = m.get(0)
        assert len(inner.inputs) == 5
        for t in range(5):
            assert np.shares_memory(inner.inputs[t], x)
            np.testing.assert_array_equal(inner.inputs[t], x[t])
        assert not np.shares_memory(y, x)
        plan = m._runtime.last.training_pair.forward.program.plan
        assert plan.copied_bytes < x.nbytes  # only the constant zero states are copied
    m.evaluate()
    m.forward(x)
    assert all(np.shares_memory(inner.inputs[t], x) for t in range(5))
