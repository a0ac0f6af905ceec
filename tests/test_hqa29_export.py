"""A backslash in a parameter or module name is drawn as written: Graphviz reads "\\n" in a
label as a line break and "\\l" as a left-justified one, so "w\\n" was drawn "w" over an empty
line and a child "a\\lb" as "a" over "b" (seen in the PNG)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")


class Odd(nn.Cell):
    def __init__(self):
        super().__init__(3, 4)
        self.parameter("w\\n", (4, 4))
        self.add_child("a\\lb", nn.Linear(3, 4))

    def step(self, x, h):
        return tn.tanh(self._children["a\\lb"](x) + h @ self._params["w\\n"])


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_child("enc\\n", nn.Linear(3, 4))

    def build(self, x):
        return self._children["enc\\n"](x)


def _texts(path) -> list[str]:
    svg = path.read_text(encoding="utf-8")
    return [re.sub(r"&#92;", "\\\\", t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


@pytest.mark.parametrize("cluster_by", ["step", "scope"])
def test_a_backslash_in_a_name_is_drawn_as_written(tmp_path, cluster_by):
    model = nn.Sequencer(Odd())
    model.forward(np.ones((2, 1, 3)))
    where = tmp_path / "odd.svg"
    tn.render(model, where, level="op", cluster_by=cluster_by)
    texts = _texts(where)
    assert "0.w\\n" in texts and "0.a\\lb.weight" in texts, texts
    if cluster_by == "scope":  # the Linear's cluster: "Linear(3 -> 4)  (0.a\\lb)"
        assert any(t.endswith("(0.a\\lb)") for t in texts), texts


@pytest.mark.parametrize("level", ["op", "module"])
def test_a_backslash_in_a_module_name_is_drawn_as_written(tmp_path, level):
    model = Outer()
    model.forward(np.ones((2, 3)))
    where = tmp_path / "outer.svg"
    tn.render(model, where, level=level, cluster_by="scope")
    texts = _texts(where)
    assert any("enc\\n" in t for t in texts), texts
