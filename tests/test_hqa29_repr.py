"""print(model) shows the tree of a module's children, named, as Torch7 and PyTorch do -- a
custom cell's or custom module's too (it printed "nn.MyCell(3 -> 4)" alone); a module whose one
line already names its children (Repeater, SequencerCriterion) keeps that line."""

from __future__ import annotations

import tapernn as tn
from tapernn import nn


class MyCell(nn.Cell):
    def __init__(self):
        super().__init__(3, 4)
        self.i2h = nn.Linear(3, 4)
        self.h2h = nn.Sequential(nn.Linear(4, 4), nn.Tanh())

    def step(self, x, h):
        return tn.tanh(self.i2h(x) + self.h2h(h))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(5, 3)

    def build(self, x):
        return self.encoder(x)


def test_a_custom_cell_prints_its_children():
    assert repr(MyCell()) == (
        "nn.MyCell(3 -> 4) {\n"
        "  (i2h): nn.Linear(3 -> 4)\n"
        "  (h2h): nn.Sequential {\n"
        "    (0): nn.Linear(4 -> 4)\n"
        "    (1): nn.Tanh\n"
        "  }\n"
        "}"
    )
    assert "(0): nn.MyCell(3 -> 4) {\n    (i2h)" in repr(nn.Sequencer(MyCell())) or repr(
        nn.Sequencer(MyCell())
    ).startswith("nn.Sequencer @ nn.MyCell(3 -> 4) {")


def test_a_custom_module_prints_its_children_and_a_leaf_its_line():
    assert repr(Net()) == "nn.Net {\n  (encoder): nn.Linear(5 -> 3)\n}"
    assert repr(nn.Linear(5, 3)) == "nn.Linear(5 -> 3)"
    assert repr(nn.Sequential(nn.Linear(3, 4), nn.Tanh())) == (
        "nn.Sequential {\n  (0): nn.Linear(3 -> 4)\n  (1): nn.Tanh\n}"
    )


def test_a_line_that_names_its_children_stays_one_line():
    assert repr(nn.Repeater(nn.LSTM(3, 4), 3)) == "nn.Repeater(nn.LSTM(3 -> 4), 3)"
    assert repr(nn.SequencerCriterion(nn.MSECriterion())) == (
        "nn.SequencerCriterion @ nn.MSECriterion"
    )
