"""Common mistakes in the Python API, made as a new user makes them (hux): each raises a
TapernnError subclass (so `except ValueError` / `TypeError` code works too) whose message says
what was expected. The first tests are the ones that raised the bare TapernnError before."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def _forwarded(module, x):
    module.forward(x)
    return module


def test_a_tn_function_on_arrays_outside_a_trace_is_a_tracing_error():
    """tn.tanh(np.ones(3)) -- tn.* taken for NumPy -- was a bare TapernnError."""
    with pytest.raises(tn.TracingError, match=r"inside tn.trace or a module's build / step \(on"):
        tn.tanh(np.ones(3))
    with pytest.raises(TypeError):  # (TracingError is a TypeError)
        tn.sigmoid(np.ones(3))


def test_a_module_built_outside_a_forward_is_a_tracing_error():
    with pytest.raises(tn.TracingError, match=r"inside a traced forward: call module.forward\(x\)"):
        tn.trace(lambda x: nn.Sequencer(nn.Tanh()).build(x), np.ones((2, 2, 3)))


def test_operands_of_two_traces_are_a_tracing_error():
    kept = []
    tn.trace(lambda a: kept.append(a) or tn.tanh(a), np.ones(3))
    with pytest.raises(tn.TracingError, match="operands were recorded in different graphs"):
        tn.trace(lambda b: b + kept[0], np.ones(3))


def test_drawing_a_module_before_its_forward_is_a_state_error(tmp_path):
    with pytest.raises(tn.StateError, match="nothing traced yet; call forward first"):
        tn.render(nn.Linear(3, 4), tmp_path / "m.svg")
    assert not (tmp_path / "m.svg").exists()


def test_drawing_the_backward_of_a_forward_only_program_is_a_state_error():
    compiled = tn.compile(tn.trace(lambda a: tn.tanh(a), np.ones(3)))
    with pytest.raises(tn.StateError, match="backward view of this program is empty"):
        tn.to_dot(compiled, view="backward")


def test_drawing_what_is_not_a_graph_is_an_argument_error(tmp_path):
    with pytest.raises(tn.ArgumentTypeError, match="expected a Graph, a Compiled program or a"):
        tn.render(3, tmp_path / "m.svg")
    graph = tn.trace(lambda a: tn.tanh(a), np.ones(3))
    with pytest.raises(tn.ArgumentError, match="compiled=True needs a Compiled object"):
        tn.render(graph, tmp_path / "g.svg", compiled=True)


X = np.random.default_rng(0).standard_normal((5, 2, 3))
LOG_P = np.log(np.full((3, 4), 0.25))


def _backward_first():
    nn.Sequencer(nn.LSTM(3, 4)).backward(X, np.ones((5, 2, 4)))


def _forget_then_backward():
    seq = _forwarded(nn.Sequencer(nn.LSTM(3, 4)), X)
    seq.forget()
    seq.backward(X, np.ones((5, 2, 4)))


def _stepwise_batch_change():
    lstm = nn.LSTM(3, 4)
    lstm.forward(np.ones((2, 3)))
    lstm.forward(np.ones((3, 3)))


MISTAKES = {
    "input of the wrong feature size": (
        lambda: nn.Sequencer(nn.LSTM(3, 4)).forward(np.ones((5, 2, 7))),
        tn.ShapeError,
        r"expected input of shape \(3,\) or \(batch, 3\), got \(2, 7\)",
    ),
    "a 1-D input to a Sequencer": (
        lambda: nn.Sequencer(nn.LSTM(3, 4)).forward(np.ones(3)),
        tn.ShapeError,
        r"expects a \(T, batch, features\) array or a list of steps",
    ),
    "steps of different shapes": (
        lambda: nn.Sequencer(nn.LSTM(3, 4)).forward([np.ones((2, 3)), np.ones((3, 3))]),
        tn.ShapeError,
        "every step of a batch must have the same shape",
    ),
    "a string array": (
        lambda: nn.Sequencer(nn.LSTM(3, 4)).forward(np.array([["a"]])),
        tn.DTypeError,
        r"expected a numeric array \(float, int or bool\)",
    ),
    "integer data to a float32 model": (
        lambda: nn.Sequencer(nn.LSTM(3, 4)).float().forward(np.ones((5, 2, 3), dtype=np.int64)),
        tn.DTypeError,
        r"pass the input as .astype\(np.float32\)",
    ),
    "float64 data beyond a float32 model's range": (
        lambda: nn.Linear(3, 4).float().forward(np.full((2, 3), 1e300)),
        tn.NumericError,
        "values beyond float32's range",
    ),
    "a float32 input to a float64 criterion": (
        lambda: nn.MSECriterion().forward(np.ones(3, np.float32), np.ones(3)),
        tn.DTypeError,
        r"convert it with criterion.float\(\)",
    ),
    "backward before forward": (_backward_first, tn.StateError, "backward called before forward"),
    "backward after forget()": (_forget_then_backward, tn.StateError, "called before forward"),
    "an output gradient of the wrong shape": (
        lambda: _forwarded(nn.Sequencer(nn.LSTM(3, 4)), X).backward(X, np.ones((5, 2, 5))),
        tn.ShapeError,
        r"expected \(5, 2, 4\) \(the output's shape\)",
    ),
    "an output gradient list of the wrong length": (
        lambda: _forwarded(
            nn.Sequential().add(nn.SplitTable(0)).add(nn.Sequencer(nn.LSTM(3, 4))), X[:, 0]
        ).backward(X[:, 0], [np.ones(4)] * 4),
        tn.ShapeError,
        "grad_output has 4 arrays, the output has 5",
    ),
    "a batch size changed while stepping": (
        _stepwise_batch_change,
        tn.StateError,
        r"call forget\(\) when the batch size changes",
    ),
    "remember() with an unknown mode": (
        lambda: nn.Sequencer(nn.LSTM(3, 4)).remember("always"),
        tn.ArgumentError,
        "remember_mode must be one of 'both', 'train', 'eval', 'neither'",
    ),
    "a 1-based class target": (
        lambda: nn.ClassNLLCriterion().forward(LOG_P, np.array([1, 2, 4])),
        tn.ValueRangeError,
        r"expected 0 <= target < 4 \(0-based\)",
    ),
    "float class targets": (
        lambda: nn.ClassNLLCriterion().forward(LOG_P, np.array([1.0, 2.0, 3.0])),
        tn.DTypeError,
        r"targets must be integer class ids \(0-based\)",
    ),
    "class targets of the wrong shape": (
        lambda: nn.ClassNLLCriterion().forward(LOG_P, np.array([[1], [2], [3]])),
        tn.ShapeError,
        r"target shape \(3, 1\) does not match input \(3, 4\)",
    ),
    "a target of another shape than the input": (
        lambda: nn.BCECriterion().forward(np.full((3, 1), 0.5), np.ones(3)),
        tn.ShapeError,
        r"input shape \(3, 1\) and target shape \(3,\) differ",
    ),
    "fewer target steps than input steps": (
        lambda: nn.SequencerCriterion(nn.ClassNLLCriterion()).forward(
            [LOG_P] * 3, [np.array([0, 1, 2])] * 2
        ),
        tn.ShapeError,
        "3 input steps but 2 target steps",
    ),
    "a LookupTable id past the table (1-based habit)": (
        lambda: nn.LookupTable(10, 4).forward(np.array([1, 10])),
        tn.ValueRangeError,
        r"id 10 out of range: expected 0 <= id < 10 \(0-based\)",
    ),
    "float ids to a LookupTable": (
        lambda: nn.LookupTable(10, 4).forward(np.array([1.0, 2.0])),
        tn.DTypeError,
        "pass the ids as an integer array",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_common_mistakes_raise_a_subclass_saying_what_was_expected(mistake):
    call, error, says = MISTAKES[mistake]
    with pytest.raises(error, match=says) as caught:
        call()
    assert type(caught.value) is not tn.TapernnError
