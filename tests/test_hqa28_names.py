"""QA round hqa28: parameter and child names are path components of state_dict keys."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


class _Cell(nn.Cell):
    state_names = ("h",)

    def __init__(self, name: str):
        super().__init__(3, 4)
        self.a = nn.Linear(3, 4)
        self.extra = self.parameter(name, (4,), init="ones")

    def step(self, x, h):
        return tn.tanh(self.a(x) + self.extra + h)


def test_a_dotted_parameter_name_that_would_shadow_a_childs_key_is_refused():
    # (was: 'a.bias' and the child's a.bias were one state_dict key: one parameter lost in save)
    with pytest.raises(tn.ArgumentError, match=r"without '\.'.*got 'a\.bias'"):
        _Cell("a.bias")


@pytest.mark.parametrize("name", ["", "x.y", "forward", "step", "a"])
def test_parameter_names_that_cannot_be_a_field_of_their_own_are_refused(name):
    with pytest.raises(tn.ArgumentError, match=repr(name).replace(".", r"\.")):
        _Cell(name)


def test_a_child_name_with_a_dot_is_refused():
    m = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(tn.ArgumentError, match=r"'x\.y'"):
        m.add_child("x.y", nn.Linear(2, 2))


def test_plain_and_unicode_names_still_work_and_round_trip(tmp_path):
    cell = _Cell("gain_é")
    assert sorted(cell.state_dict()) == ["a.bias", "a.weight", "gain_é"]
    tn.save(cell, tmp_path / "c")
    other = _Cell("gain_é")
    tn.load_into(other, tmp_path / "c")
    for k, v in cell.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
