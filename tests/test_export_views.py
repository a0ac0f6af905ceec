"""What a newcomer sees in the diagrams of real modules: collapsed templates, one box per module
and step, stacked layers told apart, the backward view, compiled programs and the legend."""

from __future__ import annotations

import re
import shutil

import pytest

import tapernn as tn
from tapernn.apps.models import build_model


def traced(name: str, steps: int = 3, backward: bool = False):
    tn.manual_seed(0)
    model, x, grad = build_model(name, steps, 2, 4)
    model.forward(x)
    if backward:
        model.backward(x, grad)
    return model


def clusters(src: str) -> list[str]:
    return re.findall(r"subgraph (cluster_step_\d+)", src)


@pytest.mark.parametrize("steps", [2, 3, 5])
@pytest.mark.parametrize("level", ["op", "module"])
def test_collapse_draws_the_step_template_once_with_a_loop(steps, level):
    src = tn.to_dot(traced("rnn", steps), level=level, collapse=True).source
    assert clusters(src) == ["cluster_step_0"], src  # was t=0, t=1 and "t = 2 … T-1" (or T=3: 3)
    assert f"t = 0 … {steps - 1}   ×{steps}" in src
    template = src[src.index("subgraph cluster_step_0") :]
    template = set(re.findall(r"^\t\t(\w+) \[", template[: template.index("\t}")], re.MULTILINE))
    loops = [
        re.match(r"\s*(\w+) -> (\w+)", line).groups()
        for line in src.splitlines()
        if "1a7f37" in line
    ]  # the recurrent colour
    assert len(loops) == 1 and set(loops[0]) <= template  # h_t -> t+1 loops back into it
    assert 'label="t+1"' in src
    if level == "op":
        assert "getitem [t]" in src
        zeros = re.search(r'(n\d+) \[label="zeros\n2×4\nat t = 0"', src)
        assert zeros and src.index(zeros.group(0)) < src.index("subgraph cluster_step_0")


def boxes(src: str) -> dict[str, str]:
    """DOT node id -> label."""
    found = re.findall(r'^\s*(\w+) \[label=(?:"([^"]*)"|([^\s\]]+))', src, re.MULTILINE)
    return {k: quoted or bare for k, quoted, bare in found}


def test_default_graph_draws_one_box_per_module_and_step_without_sequencer_twins():
    src = tn.to_dot(traced("lstm"), level="module").source
    labels = boxes(src)
    assert not [v for v in labels.values() if "Sequencer" in v]  # was one beside each LSTM t=k
    assert sorted(v for v in labels.values() if v.startswith("LSTM")) == [
        f"LSTM\nt={t}" for t in range(3)
    ]
    pairs = set(re.findall(r"^\s*(\w+) -> (\w+)", src, re.MULTILINE))
    assert not {(b, a) for a, b in pairs} & pairs  # no arrows both ways
    by_label = {v: k for k, v in labels.items()}
    assert (by_label["input"], by_label["LSTM\nt=1"]) in pairs
    assert (by_label["LSTM\nt=2"], by_label["out0"]) in pairs


def test_stacked_layers_are_named_apart():
    labels = set(boxes(tn.to_dot(traced("stacked"), level="module").source).values())
    assert {"LSTM layer 0\nt=0", "LSTM layer 1\nt=2", "Dropout(0.5)\nt=1"} <= labels


def test_both_view_shows_select_table_and_gradients_by_module():
    src = tn.to_dot(traced("tutorial-acceptor", backward=True), level="module", view="both").source
    labels = list(boxes(src).values())
    assert "SelectTable(-1)" in labels and "∂SelectTable(-1)" in labels  # recorded no op
    assert [v for v in labels if "Σ over t" in v] == ["∂LSTM\nΣ over t"]  # not ∂Linear, ∂Sigmoid
    assert "∂Linear" in labels and "∂Sigmoid" in labels
    assert "∂ parameters ×15\nLSTM" in labels  # was a blob of 15 names
    assert not [v for v in labels if v.count("grad_") > 1]
    ids = {v: k for k, v in boxes(src).items()}
    pairs = set(re.findall(r"^\s*(\w+) -> (\w+)", src, re.MULTILINE))
    assert (ids["LSTM\nt=2"], ids["SelectTable(-1)"]) in pairs
    assert (ids["SelectTable(-1)"], ids["Linear"]) in pairs
    assert (ids["LSTM\nt=2"], ids["Linear"]) not in pairs


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
def test_step_clusters_sit_left_to_right_in_one_row():
    import subprocess

    src = tn.to_dot(traced("stacked"), level="module").source
    plain = subprocess.run(
        ["dot", "-Tplain"], input=src, capture_output=True, text=True, check=True
    ).stdout
    pos = {
        m[0]: (float(m[1]), float(m[2]))
        for m in re.findall(r"^node (\w+) ([\d.]+) ([\d.]+)", plain, re.MULTILINE)
    }
    ids = {v: k for k, v in boxes(src).items()}
    for layer in (0, 1):
        xy = [pos[ids[f"LSTM layer {layer}\nt={t}"]] for t in range(3)]
        assert xy[0][0] < xy[1][0] < xy[2][0]
        assert max(y for _, y in xy) - min(y for _, y in xy) < 0.1  # a row, not a staircase
    last_of_0 = pos[ids["LSTM layer 1\nt=0"]][0]
    assert last_of_0 < pos[ids["LSTM layer 0\nt=1"]][0]  # step 1 starts after step 0 ends


def test_compiled_views_draw_the_forward_the_backward_and_both_programs(tmp_path):
    from tapernn.apps.cli import main

    sources = {}
    for view in ("forward", "backward", "both"):
        out = tmp_path / f"{view}.dot"
        assert (
            main(
                [
                    "graph",
                    "--model",
                    "rnn",
                    "--level",
                    "op",
                    "--compiled",
                    "--view",
                    view,
                    "-o",
                    str(out),
                ]
            )
            == 0
        )
        sources[view] = out.read_text()
    assert len(set(sources.values())) == 3  # forward and both were byte-identical
    backward_ops = lambda src: len(re.findall(r"style=\"rounded,filled,dashed\"", src))
    assert backward_ops(sources["forward"]) == 0
    assert backward_ops(sources["backward"]) > 5  # was an empty graph
    assert backward_ops(sources["both"]) == backward_ops(sources["backward"])
    assert "grad_0.b_h" in sources["backward"] and "grad_0.b_h" in sources["both"]


def test_compiled_nodes_say_what_they_compute_and_where_the_value_lives():
    model = traced("rnn", backward=True)
    labels = list(boxes(tn.to_dot(model, compiled=True, view="both").source).values())
    forward = [v for v in labels if "forward" in v.split("\n")[-1]]
    assert forward and not [v for v in forward if "grad_" in v]  # was "grad_0.[w_xh w_hh]"
    tanh_t0 = [v for v in labels if v.startswith("fused: add → tanh\n2×4  t=0")]
    assert tanh_t0 and "saved for backward" in tanh_t0[0]
    assert any(re.search(r"\nforward b\d+$", v) for v in labels)  # a preallocated buffer
    assert any(v.startswith("grad_0.b_h\n") for v in labels)
    module = list(
        boxes(tn.to_dot(model, compiled=True, view="both", level="module").source).values()
    )
    assert not [v for v in module if re.search(r"(\w+) \1", v)]  # was "y_0 y_0 y_0 …"
    assert module.count("out0") == 1 and "∂RNN\nt=1" in module


def test_compiled_diagrams_carry_a_legend_of_the_colours_they_use():
    src = tn.to_dot(traced("rnn", backward=True), compiled=True, view="both").source
    legend = src[src.index("subgraph cluster_legend") :]
    for text in (
        "data in",
        "parameter",
        "fused ops: one kernel",
        "backward op",
        "gradient out",
        "state to the next step",
        "gradient flow (backward)",
    ):
        assert text in legend
    assert "fused ops" not in tn.to_dot(traced("rnn"), legend=True).source  # what is used only
    assert "cluster_legend" not in tn.to_dot(traced("rnn")).source  # off unless compiled


def test_an_empty_view_is_an_error_not_an_empty_file():
    from tapernn.export.samples import lstm_graph

    with pytest.raises(tn.TapernnError, match="backward view of this program is empty"):
        tn.to_dot(tn.compile(lstm_graph(steps=2)), view="backward")
