"""The pass pipeline: DEFAULT is what runs (one named entry per rewrite), repetition is an
explicit until_stable, ordering constraints are checked, a failing pass names itself and its
predecessors, `dump=` sees every stage -- and every entry of DEFAULT, at its place in the
pipeline, keeps the values the reference interpreter gives for the unoptimised graph (per-gate
LSTM, the built-in cells' training graphs)."""

import numpy as np
import pytest
from lstm_fixture import lstm_graph

import tapernn as tn
from tapernn import nn
from tapernn import passes as P
from tapernn.interpret import interpret
from tapernn.passes.driver import pass_name


def test_default_is_what_runs_one_named_entry_per_rewrite():
    g, _ = lstm_graph(3, 2, 3, 4)
    names = [pass_name(p) for p in P.DEFAULT]
    assert [r.name for r in tn.compile(g).report.passes] == names
    repeated = {n for n in names if names.count(n) > 1}
    assert repeated == {"eliminate_common_subexpressions", "eliminate_dead_code"}
    for composite in ("hoist_across_time", "fuse_gates", "simplify_views"):
        assert composite not in names  # their rewrites are listed one by one
    assert "until_stable(batch_sliced_elementwise)" in names


def test_until_stable_repeats_until_nothing_changes():
    calls = []

    def peel(graph):  # drops one output per call while more than one is left
        calls.append(len(graph.outputs))
        if len(graph.outputs) == 1:
            return graph
        out = graph.copy()
        out.outputs = out.outputs[:-1]
        return out.eliminate_dead_code()

    g = tn.trace(lambda x: [tn.exp(x), tn.tanh(x), -x, x * 2.0], np.ones(2))
    stable = P.until_stable(peel)
    assert pass_name(stable) == "until_stable(peel)"
    assert len(stable(g).outputs) == 1 and calls == [4, 3, 2, 1]
    calls.clear()
    assert len(P.until_stable(peel, max_rounds=2)(g).outputs) == 2 and calls == [4, 3]


def test_ordering_constraints_are_checked_by_the_driver():
    g, _ = lstm_graph(2, 2, 3, 4)
    wrong = [P.fuse_gate_matmuls, P.stack_matmuls_over_time]
    with pytest.raises(
        tn.GraphError,
        match=r"'fuse_gate_matmuls' \(position 0\) must follow "
        r"'stack_matmuls_over_time'.*position 1",
    ):
        tn.compile(g, passes=wrong)
    with pytest.raises(tn.GraphError, match="must follow"):
        tn.set_default_passes(wrong)
    with pytest.raises(tn.GraphError, match="must follow"):
        nn.Linear(2, 2).set_passes(wrong)
    tn.compile(g, passes=[P.fuse_gate_matmuls])  # alone (an ablation): allowed
    reordered = list(P.DEFAULT)
    k = reordered.index(P.stack_matmuls_over_time)
    reordered.append(reordered.pop(k))
    with pytest.raises(tn.GraphError, match="must follow"):
        P.check_order(reordered)


def test_a_failing_pass_names_itself_and_its_predecessors():
    g = tn.trace(lambda x: tn.exp(x), np.ones(2))

    def broken(graph):
        raise KeyError("boom")

    def no_graph(graph):
        return None

    with pytest.raises(
        tn.GraphError,
        match=r"pass 'broken' \(position 2, after "
        r"\['eliminate_dead_code', 'fold_constants'\]\) "
        r"failed: KeyError: 'boom'",
    ):
        tn.compile(g, passes=[P.eliminate_dead_code, P.fold_constants, broken])
    with pytest.raises(
        tn.GraphError,
        match=r"'no_graph' \(position 0, after no pass\) failed: "
        r"GraphError: returned NoneType",
    ):
        tn.compile(g, passes=[no_graph])


def test_dump_sees_the_graph_after_every_pass(tmp_path):
    g, _ = lstm_graph(2, 2, 3, 4)
    seen = []
    tn.compile(g, dump=lambda k, name, graph: seen.append((k, name, len(graph.nodes))))
    assert [name for _, name, _ in seen] == ["input"] + [pass_name(p) for p in P.DEFAULT]
    assert [k for k, _, _ in seen] == list(range(len(P.DEFAULT) + 1))
    assert seen[0][2] == len(g.nodes)
    tn.compile(g, passes=[P.eliminate_dead_code, P.fuse_elementwise], dump=tmp_path / "stages")
    files = sorted(p.name for p in (tmp_path / "stages").iterdir())
    assert files == ["00_input.txt", "01_eliminate_dead_code.txt", "02_fuse_elementwise.txt"]
    assert "fused" in (tmp_path / "stages" / "02_fuse_elementwise.txt").read_text()


def _assert_every_stage_keeps_values(graph, arrays, rtol=1e-11):
    expected = interpret(graph, *arrays)
    stages = []
    P.run_passes(graph, P.DEFAULT, dump=lambda k, name, g: stages.append((name, g)))
    assert len(stages) == len(P.DEFAULT) + 1
    for k, (name, stage) in enumerate(stages):
        for a, b in zip(interpret(stage, *arrays), expected):
            np.testing.assert_allclose(
                a, b, rtol=rtol, atol=1e-12, err_msg=f"after entry {k - 1}: {name}"
            )


def test_every_default_entry_keeps_the_values_of_a_per_gate_lstm():
    g, arrays = lstm_graph(4, 2, 3, 4, seed=3)
    _assert_every_stage_keeps_values(g, arrays)


CELLS = {
    "FastLSTM": lambda: nn.FastLSTM(3, 4),
    "LSTM": lambda: nn.LSTM(3, 4),
    "GRU": lambda: nn.GRU(3, 4),
    "RNN": lambda: nn.RNN(3, 4),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_every_default_entry_keeps_the_values_of_a_cells_training_graph(name):
    rng = np.random.default_rng(7)
    m = nn.Sequencer(CELLS[name]())
    x = rng.standard_normal((4, 2, 3))
    m.forward(x)
    m.backward(x, rng.standard_normal((4, 2, 4)))
    joint = m._runtime.last.training_pair.joint  # forward + backward, before any pass
    arrays = [
        rng.standard_normal(n.shape).astype(n.dtype)
        if n.dtype.kind == "f"
        else np.zeros(n.shape, n.dtype)
        for n in joint.inputs
    ]
    _assert_every_stage_keeps_values(joint, arrays)
