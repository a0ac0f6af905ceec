"""QA round hqa28: diagrams of long sequences through the Python API (tn.render)."""

import warnings

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.export import rendering


def _model(steps: int):
    m = nn.Sequencer(nn.LSTM(2, 3))
    m.forward(np.zeros((steps, 1, 2)))
    return m


@pytest.fixture
def no_dot(monkeypatch):
    """dot itself is not run: the warning comes before any layout."""
    monkeypatch.setattr(rendering, "pipe", lambda dot, fmt: b"<svg/>")


def test_a_wide_unrolled_diagram_warns_before_dot_lays_it_out(tmp_path, no_dot):
    # (was: tn.render(model, "x.svg") of 100 steps said nothing and dot ran for minutes;
    # only `tapernn graph` printed a note)
    with pytest.warns(rendering.WideDiagramWarning, match=r"100 steps.*collapse=True"):
        tn.render(_model(100), tmp_path / "x.svg", level="module")
    with pytest.warns(rendering.WideDiagramWarning, match=r"20 steps unrolled at op level"):
        tn.render(_model(20), tmp_path / "y.svg", level="op")


def test_no_warning_for_dot_source_a_collapsed_or_a_narrow_diagram(tmp_path, no_dot):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tn.render(_model(100), tmp_path / "x.dot", level="module")
        tn.render(_model(100), tmp_path / "x.svg", level="module", collapse=True)
        tn.render(_model(5), tmp_path / "y.svg", level="op")
