"""A custom module whose `build` cannot take what it is called with (a module's input; a
criterion's input and target) raised Python's bare TypeError from Module.apply ("build() takes 1
positional argument but 2 were given"), naming neither the module nor what to write (hqa26's
note). Now a BuildError naming the module, its build's signature and the one to define; a
TypeError raised inside a build that can take its arguments stays the build's own."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import BuildError


class NoInput(nn.Module):
    def build(self):  # forgot the input
        return 1


class TwoInputs(nn.Module):
    def build(self, x, y):  # called with one input
        return x + y


class NoTarget(nn.Criterion):
    def build(self, x):  # a criterion's build takes the input and the target
        return tn.sum(x)


class OwnTypeError(nn.Module):
    def build(self, x):
        return len(5)  # a mistake inside a build that takes its argument


@pytest.mark.parametrize(
    "module, args, expected",
    [
        (NoInput(), (np.ones((2, 3)),), r"nn\.NoInput: build\(\) .* define build\(self, input\)"),
        (TwoInputs(), (np.ones((2, 3)),), r"build\(x, y\) .* define build\(self, input\)"),
        (
            NoTarget(),
            (np.ones((2, 3)), np.ones((2, 3))),
            r"nn\.NoTarget: build\(x\) cannot take the 2 argument\(s\) .* build\(self, input, target\)",
        ),
    ],
    ids=["no-input", "two-inputs", "criterion-no-target"],
)
def test_wrong_build_arguments_say_what_to_define(module, args, expected):
    with pytest.raises(BuildError, match=expected):
        module.forward(*args)


def test_a_type_error_inside_a_build_is_its_own():
    with pytest.raises(TypeError, match="has no len") as info:
        OwnTypeError().forward(np.ones(3))
    assert not isinstance(info.value, BuildError)


def test_inside_a_container_the_inner_module_is_named():
    model = nn.Sequential(nn.Linear(3, 3), NoInput())
    with pytest.raises(BuildError, match=r"nn\.NoInput: build\(\)"):
        model.forward(np.ones((2, 3)))
