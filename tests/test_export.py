"""Diagrams: DOT structure per level/view, real SVG/PNG rendering with Graphviz, the missing-`dot`
error path, JSON round trip, collapse, scope clusters, compiled programs and per-pass diagrams.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest

import tapernn as tn
from tapernn.errors import RenderError, TapernnError
from tapernn.export import repr_svg
from tapernn.export.samples import lstm_graph
from tapernn.graph import Node

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def forward():
    return lstm_graph(steps=3, batch=2, n_in=3, hidden=4)


@pytest.fixture
def both(forward):
    return tn.grad(forward)


def cluster_titles(svg: bytes) -> list[str]:
    root = ET.fromstring(svg)
    return [
        g.find(f"{SVG}title").text
        for g in root.iter(f"{SVG}g")
        if g.get("id", "").startswith("clust")
    ]


# ---- DOT structure -------------------------------------------------------------------------------


def test_parameters_are_drawn_once_outside_the_step_clusters(forward):
    src = tn.to_dot(forward).source
    assert len(re.findall(r"label=\"W_i\n", src)) == 1
    first_cluster = src.index("subgraph cluster_step_0")
    assert src.index('label="W_i\n') < first_cluster


def test_one_cluster_per_step_in_order_with_recurrent_edges(forward):
    src = tn.to_dot(forward).source
    positions = [src.index(f"subgraph cluster_step_{t} ") for t in range(3)]
    assert positions == sorted(positions)
    assert src.count("subgraph cluster_step_") == 3
    assert src.count('color="#1a7f37"') == 2 * (4 + 1)  # h feeds 4 gates, c feeds 1 mul; 2 joins


def test_views_select_phases(both):
    fwd = tn.to_dot(both, view="forward").source
    bwd = tn.to_dot(both, view="backward").source
    full = tn.to_dot(both, view="both").source
    assert "#fff0f0" not in fwd and "dir=back" not in fwd  # no backward node or edge
    assert "grad_h_0" not in fwd and "grad_h_0" in bwd and "grad_h_0" in full
    assert "#f2f2f2" in bwd  # forward values backward reads, greyed
    assert full.count("->") > bwd.count("->") > fwd.count("->")


def test_backward_edges_are_reversed_for_layout_but_point_backwards(both):
    src = tn.to_dot(both, view="both").source
    assert "dir=back" in src
    assert "style=dashed" in src


def test_node_ids_come_from_tape_positions(forward):
    src = tn.to_dot(forward).source
    ids = [int(m) for m in re.findall(r"^\s*n(\d+) \[", src, re.MULTILINE)]
    assert sorted(ids) == ids or set(ids) <= set(range(len(forward.nodes)))
    assert max(ids) < len(forward.nodes)


def test_scalar_constants_are_folded_into_labels(both):
    src = tn.to_dot(both, view="both").source
    assert "sub(1, ·)" in src
    assert "label=1\n" not in src


def test_module_level_boxes_per_module_and_step():
    g = lstm_graph(steps=3, n_out=2)
    src = tn.to_dot(g, level="module").source
    for t in range(3):
        assert f'"LSTM\nt={t}"' in src and f'"Linear\nt={t}"' in src
        assert f"label=x_{t}" in src and f"label=y_{t}" in src
    assert src.count('color="#1a7f37"') == 2  # LSTM t -> LSTM t+1
    assert "W_i" not in src  # parameters live inside their module's box


def test_module_level_backward_has_gradient_boxes():
    g = tn.grad(lstm_graph(steps=3, n_out=2))
    src = tn.to_dot(g, level="module", view="both").source
    assert '"∂LSTM\nt=1"' in src and "Σ over t" in src
    assert "grad_W_i grad_U_i grad_b_i" in src


def test_module_names_come_from_meta_scopes():
    g = lstm_graph(steps=2)
    g.meta = dataclasses.replace(g.meta, scopes={"seq.lstm": "nn.LSTM(3 -> 4)"})
    assert '"LSTM\nt=1"' in tn.to_dot(g, level="module").source
    g.meta = dataclasses.replace(g.meta, scopes={})
    assert '"seq.lstm\nt=1"' in tn.to_dot(g, level="module").source


def test_cluster_by_scope_nests_dotted_scopes(forward):
    src = tn.to_dot(forward, cluster_by="scope").source
    outer, inner = src.index("subgraph cluster_scope_seq {"), src.index("cluster_scope_seq_lstm")
    assert outer < inner
    assert "cluster_step_" not in src


def test_collapse_draws_each_class_of_steps_once():
    g = lstm_graph(steps=10)
    src = tn.to_dot(g, collapse=True).source
    assert src.count("subgraph cluster_step_") == 1  # t=0 reads h0/c0 where the others read t-1
    assert "t = 0 … 9   ×10" in src
    assert "t+1" in src  # the recurrent edge loops back into the template
    assert src.count('label="W_i\n') == 1
    full = tn.to_dot(g).source
    assert src.count("->") < full.count("->") / 3


def test_collapse_backward_keeps_steps_that_differ():
    g = tn.grad(lstm_graph(steps=6))
    src = tn.to_dot(g, view="both", collapse=True).source
    assert 3 <= src.count("subgraph cluster_step_") < 6
    assert "×" in src


def test_bad_arguments_raise_tapernn_errors(forward):
    for kwargs in (
        {"level": "cell"},
        {"view": "sideways"},
        {"cluster_by": "time"},
        {"compiled": True},
    ):
        with pytest.raises(TapernnError):
            tn.to_dot(forward, **kwargs)
    with pytest.raises(TapernnError):
        tn.to_dot(42)


# ---- compiled programs and modules ----------------------------------------------------------------


def test_compiled_objects_and_modules_are_drawn(forward):
    program = tn.compile(forward, passes=[])
    drawn = lambda src: re.findall(r"^\s*(n\d+) \[label=\"?([^\n\"]*)", src, re.MULTILINE)
    # no passes: the same nodes, each with its first label line; compiled adds buffers, legend
    assert drawn(tn.to_dot(program, legend=False).source) == drawn(tn.to_dot(forward).source)
    assert "cluster_legend" in tn.to_dot(program).source
    module = SimpleNamespace(graph=forward, compiled=program)
    assert tn.to_dot(module).source == tn.to_dot(forward).source
    assert tn.to_dot(module, compiled=True).source == tn.to_dot(program).source


def test_fused_nodes_list_their_ops_and_buffers_label_edges(forward):
    x = forward.inputs[0]
    fused = Node("tanh", [x], {"ops": ["mul", "add", "tanh"]}, x.shape, x.dtype, step=0)
    graph = tn.Graph([x, fused], [x], [fused])
    fake = SimpleNamespace(graph=graph, report=SimpleNamespace(buffer_of={x: 3, 1: 4}))
    src = tn.to_dot(fake).source
    assert "fused: mul → add → tanh" in src
    assert "label=b3" in src


# ---- rendering ---------------------------------------------------------------------------------


@needs_dot
@pytest.mark.parametrize("level", ["op", "module"])
@pytest.mark.parametrize("view", ["forward", "backward", "both"])
def test_svg_parses_and_has_one_cluster_per_step(both, tmp_path, level, view):
    path = tn.render(both, tmp_path / f"{level}_{view}.svg", level=level, view=view)
    titles = cluster_titles(path.read_bytes())
    assert titles == [f"cluster_step_{t}" for t in range(3)]


@needs_dot
def test_png_and_pdf_render(forward, tmp_path):
    png = tn.render(forward, tmp_path / "lstm.png", level="module")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = tn.render(forward, tmp_path / "lstm.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_dot_file_needs_no_graphviz(forward, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    path = tn.render(forward, tmp_path / "lstm.dot")
    assert path.read_text() == tn.to_dot(forward).source


def test_missing_dot_raises_render_error_with_install_hint(forward, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(RenderError, match="apt-get install graphviz") as info:
        tn.render(forward, tmp_path / "lstm.svg")
    assert "brew install graphviz" in str(info.value) and "conda install graphviz" in str(
        info.value
    )
    assert isinstance(info.value, TapernnError)
    assert repr_svg(forward) is None and forward._repr_svg_() is None


def test_dot_vanishing_from_path_raises_render_error(forward, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: "/usr/bin/dot")  # stale answer
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RenderError, match="install Graphviz"):
        tn.render(forward, tmp_path / "lstm.png")


def test_unknown_suffix_is_rejected(forward, tmp_path):
    with pytest.raises(RenderError, match="format"):
        tn.render(forward, tmp_path / "lstm.jpeg")


@needs_dot
def test_repr_svg_for_graphs_and_compiled(forward):
    svg = forward._repr_svg_()
    assert svg is not None and "<svg" in svg
    ET.fromstring(svg.encode())
    assert "<svg" in tn.compile(forward, passes=[])._repr_svg_()


# ---- JSON and per-pass diagrams ------------------------------------------------------------------


def test_json_round_trips_through_networkx(both):
    data = json.loads(json.dumps(tn.to_json(both)))
    g = nx.node_link_graph(data, edges="edges")
    ref = both.to_networkx()
    assert sorted(g.nodes(data=True)) == sorted(ref.nodes(data=True))
    assert sorted(g.edges(keys=True, data=True)) == sorted(ref.edges(keys=True, data=True))
    node = g.nodes[len(both.nodes) - 1]
    assert {"op", "shape", "dtype", "step", "scope", "phase"} <= set(node)
    assert any(d["step"] == 2 and d["phase"] == "backward" for _, d in g.nodes(data=True))


def drop_gradients_of_inputs(graph):
    """A stand-in pass that changes the node count: keeps only the forward outputs."""
    n = graph.meta.n_forward_outputs
    n = len(graph.outputs) if n is None else n
    return tn.Graph(graph.nodes, graph.inputs, graph.outputs[:n], graph.meta).eliminate_dead_code()


@needs_dot
def test_render_passes_numbers_stages_and_shows_deltas(both, tmp_path):
    paths = tn.render_passes(both, tmp_path, passes=[drop_gradients_of_inputs])
    assert [p.name for p in paths] == ["00_input.svg", "01_drop_gradients_of_inputs.svg"]
    text = " ".join(ET.fromstring(paths[1].read_bytes()).itertext())
    before, after = len(both.nodes), len(drop_gradients_of_inputs(both).nodes)
    assert f"{before} → {after} nodes ({after - before:+d})" in text
    ET.fromstring(paths[0].read_bytes())


@needs_dot
def test_render_passes_with_the_default_pipeline(forward, tmp_path):
    paths = tn.render_passes(forward, tmp_path)
    assert paths[0].name == "00_input.svg"
    assert len(paths) == 1 + len(tn.passes.default_passes())


def test_render_passes_dot_format_needs_no_graphviz(forward, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    paths = tn.render_passes(forward, tmp_path, passes=[], fmt="dot")
    assert paths[0].read_text().startswith("digraph")


def test_long_sequences_route_shared_parameters_through_buses():
    src = tn.to_dot(lstm_graph(steps=6)).source
    assert src.count('label="W_i\n') == 1
    assert "bus_" in src  # one junction per step instead of a long edge per step
    long_edges = [
        line for line in src.splitlines() if re.match(r"\s*n\d+ -> n\d+", line) and "d9b84a" in line
    ]
    assert not long_edges  # every parameter edge now goes through the step's junction
    assert src.count("subgraph cluster_step_") == 6


def test_large_drawings_limit_dot_layout_iterations_and_small_ones_do_not():
    from tapernn.export.ops_view import LARGE_DRAWING

    small = tn.grad(lstm_graph(steps=2))
    large = tn.grad(lstm_graph(steps=15))
    assert len(small.nodes) < LARGE_DRAWING < len(large.nodes)
    header = lambda g: tn.to_dot(g, view="both").source.split("\n")[1]
    assert "mclimit" not in header(small) and "nslimit" not in header(small)
    assert "mclimit=0.3" in header(large) and "nslimit=0.1" in header(large)


def test_render_passes_takes_a_module_and_explains_an_untraced_one(tmp_path):
    from tapernn import nn

    seq = nn.Sequencer(nn.LSTM(3, 4))
    with pytest.raises(TapernnError, match="nothing traced yet; call forward first"):
        tn.render_passes(seq, tmp_path / "none", fmt="dot")
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    seq.forward(x)
    paths = tn.render_passes(seq, tmp_path / "fwd", fmt="dot")
    assert len(paths) == 1 + len(tn.passes.default_passes())
    assert "input: " + str(len(seq.graph.nodes)) + " nodes" in paths[0].read_text()
