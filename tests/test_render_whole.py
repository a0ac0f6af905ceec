"""`tn.render` replaces an existing file whole or not at all: a write that fails part way
(here: a label that cannot be encoded, as a failing disk would) keeps the previous diagram,
and says so with a RenderError naming the path (before: the file was truncated to 0 bytes and
a bare UnicodeEncodeError escaped)."""

from __future__ import annotations

import graphviz
import pytest

import tapernn as tn


def test_a_failed_render_keeps_the_previous_file(tmp_path):
    path = tmp_path / "diagram.dot"
    good = graphviz.Digraph()
    good.node("a", "fine")
    tn.render(good, path)
    before = path.read_bytes()
    assert b"fine" in before
    bad = graphviz.Digraph()
    bad.node("b", "bad \udcff label")  # a lone surrogate: utf-8 cannot encode it
    with pytest.raises(tn.TapernnError, match="cannot write .*diagram.dot"):
        tn.render(bad, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diagram.dot"]  # no temporary left


def test_render_replaces_an_existing_file(tmp_path):
    path = tmp_path / "d.gv"
    path.write_text("x" * 10_000)
    dot = graphviz.Digraph()
    dot.node("a")
    tn.render(dot, path)
    assert path.read_text() == dot.source


def test_render_into_a_directory_path_is_a_render_error(tmp_path):
    (tmp_path / "d.dot").mkdir()
    with pytest.raises(tn.TapernnError, match="cannot write"):
        tn.render(graphviz.Digraph(), tmp_path / "d.dot")
