"""hqa17: module-level diagrams draw a recurrent module (a FastLSTM with its Linear children and
gates, a Recurrence) and a MaskZero with its module as ONE box per step, named by class: on
main a FastLSTM was drawn as "Linear layer 0 / 1" boxes with recurrent edges from step 0 to
step 2 (its cell state passed through its gates, which were drawn as plumbing), a MaskZero's
select as edges from the layer below straight to the output, and BiSequencer's directions as
"layers"."""

import re
import shutil

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

RECURRENT = "#1a7f37"


def _boxes_and_state_edges(model, x, **kw):
    y = model.forward(x)
    model.backward(x, np.ones_like(y))
    src = tn.to_dot(model, level="module", **kw).source
    labels = {
        m.group(1): (m.group(2) or m.group(3)).replace("\n", " ")
        for m in re.finditer(r'^\s*(m\d+) \[label=(?:"([^"]*)"|(\S+))', src, re.MULTILINE)
    }
    state = [
        (labels[a], labels[b])
        for a, b, attrs in re.findall(r"^\s*(m\d+) -> (m\d+) \[([^\]]*)\]", src, re.MULTILINE)
        if RECURRENT in attrs
    ]
    return labels, state, src


def _step(label):
    return int(re.search(r"t=(\d+)$", label).group(1))


def _module(label):
    return re.sub(r"\s*t=\d+$", "", label)


@pytest.mark.parametrize(
    "make, names",
    [
        (lambda: nn.Sequencer(nn.FastLSTM(3, 4)), {"FastLSTM"}),
        (
            lambda: nn.Sequencer(nn.Sequential(nn.FastLSTM(3, 4), nn.FastLSTM(4, 4))),
            {"FastLSTM layer 0", "FastLSTM layer 1"},
        ),
        (
            lambda: nn.Sequencer(nn.Sequential(nn.LSTM(3, 4), nn.MaskZero(nn.GRU(4, 4), 1))),
            {"LSTM", "MaskZero @ GRU"},
        ),
        (
            lambda: nn.Sequencer(nn.Sequential(nn.FastLSTM(3, 4).mask_zero(), nn.Linear(4, 2))),
            {"FastLSTM (mask_zero)", "Linear"},
        ),
        (
            lambda: nn.BiSequencer(nn.FastLSTM(3, 4).mask_zero(), nn.FastLSTM(3, 4).mask_zero()),
            {"FastLSTM (fwd, mask_zero)", "FastLSTM (bwd, mask_zero)", "JoinTable(-1)"},
        ),
    ],
)
def test_one_box_per_module_and_step_and_state_edges_between_neighbours(make, names):
    T = 3
    x = np.random.default_rng(0).standard_normal((T, 2, 3))
    x[1, 0] = 0
    labels, state, _ = _boxes_and_state_edges(make(), x)
    boxes = [v for v in labels.values() if re.search(r"t=\d+$", v)]
    assert {_module(v) for v in boxes} == names, labels
    for name in names:  # one box per step
        assert sorted(_step(v) for v in boxes if _module(v) == name) == list(range(T)), labels
    assert state, "no recurrent state edge drawn"
    for a, b in state:  # the state goes from a module's step to the same module's next one
        assert _module(a) == _module(b) and abs(_step(a) - _step(b)) == 1, (a, b)


def test_a_masked_layer_reads_only_the_layer_below():
    """MaskZero's zero-row test reads its input: drawn inside its box, not as LSTM -> output."""
    model = nn.Sequencer(nn.Sequential(nn.LSTM(3, 4), nn.MaskZero(nn.GRU(4, 4), 1)))
    labels, _, src = _boxes_and_state_edges(model, np.ones((3, 2, 3)))
    out = next(k for k, v in labels.items() if v == "out0")
    feeding = {labels[a] for a in re.findall(rf"^\s*(m\d+) -> {out}\b", src, re.MULTILINE)}
    assert feeding == {f"MaskZero @ GRU t={t}" for t in range(3)}, feeding


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz dot")
@pytest.mark.parametrize("view", ["forward", "backward", "both"])
def test_a_masked_bisequencer_renders_at_module_level(tmp_path, view):
    """On main `dot` failed on the "both" view ("trouble in init_rank": RenderError)."""
    model = nn.BiSequencer(nn.FastLSTM(3, 4).mask_zero(), nn.FastLSTM(3, 4).mask_zero())
    x = np.random.default_rng(1).standard_normal((3, 2, 3))
    x[1, 0] = 0
    y = model.forward(x)
    model.backward(x, np.ones_like(y))
    path = tn.render(model, tmp_path / f"bi_{view}.png", level="module", view=view)
    assert path.stat().st_size > 1000


def test_a_dot_failure_is_one_short_line(monkeypatch, tmp_path):
    """On main the RenderError held dot's whole stderr as a bytes repr (~6,000 characters of
    rank dumps for the BiSequencer above)."""
    import graphviz

    from tapernn.errors import RenderError
    from tapernn.export import rendering

    dump = b"Error: trouble in init_rank\n" + b"\t%0 1\n" * 2000 + b"\tm15 1\nlibpath/x.c: failed\n"

    def fails(self, format=None):
        raise graphviz.CalledProcessError(1, ["dot"], stderr=dump)

    monkeypatch.setattr(rendering, "dot_available", lambda: True)
    monkeypatch.setattr(graphviz.Digraph, "pipe", fails)
    model = nn.Sequencer(nn.FastLSTM(3, 4))
    model.forward(np.ones((2, 1, 3)))
    with pytest.raises(RenderError) as e:
        tn.render(model, tmp_path / "m.png", level="module")
    said = str(e.value)
    assert "\n" not in said and len(said) < 500, said
    assert "trouble in init_rank" in said and "libpath/x.c: failed" in said and "%0" not in said
