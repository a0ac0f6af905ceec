"""QA round as a user (hqa26): a custom nn.Cell whose `step` takes other arguments than the input
and one per `state_names` entry raised Python's bare TypeError from the trace ("step() takes 2
positional arguments but 3 were given"), naming neither the cell nor state_names. NumPy backend
(the trace is the same on both)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


class _OneState(nn.Cell):
    state_names = ("h",)

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.parameter("w", (input_size + hidden_size, hidden_size))


class StepWithoutState(_OneState):
    def step(self, x):  # forgot h
        return x


class StepWithExtraState(_OneState):
    def step(self, x, h, c):  # two states, state_names has one
        return h


class StepRaisingTypeError(_OneState):
    def step(self, x, h):  # the user's own TypeError inside a well-formed step stays theirs
        return h + "oops"


@pytest.mark.parametrize("cls", [StepWithoutState, StepWithExtraState])
def test_a_step_whose_arguments_do_not_match_state_names_is_a_build_error(cls):
    seq = nn.Sequencer(cls(3, 4))
    with pytest.raises(tn.BuildError) as info:
        seq.forward(np.zeros((2, 1, 3)))
    message = str(info.value)
    assert cls.__name__ in message and "state_names" in message and "('h',)" in message
    assert "step(self, x, h)" in message  # what to write


def test_a_type_error_inside_a_well_formed_step_is_not_renamed():
    seq = nn.Sequencer(StepRaisingTypeError(3, 4))
    with pytest.raises(TypeError) as info:
        seq.forward(np.zeros((2, 1, 3)))
    assert not isinstance(info.value, tn.BuildError)
