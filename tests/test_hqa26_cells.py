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


class ScaledByIntegers(_OneState):
    def step(self, x, h):  # an integer array constant: NumPy promotes float32 with it to float64
        return tn.tanh(tn.concat([x, h], axis=-1) @ self.w) * np.arange(4)


def test_a_float32_state_promoted_by_an_integer_constant_says_so():
    # was "state 'h' changed dtype float32 -> float64" with no word on why (the input is float)
    seq = nn.Sequencer(ScaledByIntegers(3, 4)).float()
    with pytest.raises(tn.DTypeError) as info:
        seq.forward(np.zeros((2, 1, 3), np.float32))
    message = str(info.value)
    assert "float32 -> float64" in message and "integer array" in message
    assert "np.arange(4.0)" in message or "float array" in message


def test_a_bool_state_is_not_blamed_on_integer_constants():
    class Compared(_OneState):
        def step(self, x, h):
            return h > 0

    with pytest.raises(tn.DTypeError) as info:
        nn.Sequencer(Compared(3, 4)).forward(np.zeros((2, 1, 3)))
    assert "float64 -> bool" in str(info.value) and "integer" not in str(info.value)


def test_a_shape_error_that_names_its_op_is_not_prefixed_twice():
    # tn.scan's shape rule names itself ("scan: initial carry 0 ..."); the tracer prefixed the op
    # name again: "scan: scan: initial carry 0"
    h0, xs, w = np.zeros((2, 8)), np.zeros((5, 2, 3)), np.zeros((3, 8))
    step = tn.trace(lambda h, x, w: [tn.tanh(x @ w + h)] * 2, h0, xs[0], w)
    with pytest.raises(tn.ShapeError) as info:
        tn.trace(lambda h, xs, w: tn.scan(step, [h[:1]], [xs], [w]).ys[0], h0, xs, w)
    assert str(info.value).startswith("scan: initial carry 0")
