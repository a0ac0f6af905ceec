"""Every bad input raises a TapernnError subclass saying what was expected (API.md section 8):
one table row per bad call (issue 15). The behaviours that replace silent wrong answers
(backward with a new input, NaN inputs without leaked NumPy warnings) are in
test_bad_inputs_behaviour.py, the constructor sweep in test_constructor_args.py."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn, optim
from tapernn.apps.cli import main as cli_main
from tapernn.apps.models import build_model


class _NpTanhCell(nn.Cell):
    def __init__(self):
        super().__init__(3, 3)

    def step(self, x, h):
        return np.tanh(x @ np.eye(3) + h)  # should be tn.tanh


class _NpParamCell(nn.Cell):
    def __init__(self):
        super().__init__(3, 3)
        self.parameter("w", (3, 3))

    def step(self, x, h):
        return tn.tanh(np.ones(3) + x @ self.w) + np.exp(self.w[0])  # should be tn.exp


class _NpSumCell(nn.Cell):
    def __init__(self):
        super().__init__(3, 3)

    def step(self, x, h):
        return h + np.sum(x)  # should be tn.sum


def _seq_with_initial(state_shape):
    lstm = nn.LSTM(3, 2)
    seq = nn.Sequencer(lstm)
    lstm.set_initial_state((np.zeros(state_shape), np.zeros(state_shape)))
    return seq.forward(np.ones((2, 4, 3)))


def _rebind_weight():
    m = nn.Linear(3, 2)
    m.weight.data = np.zeros((5, 5))


def _rebind_to_list():
    m = nn.Linear(3, 2)
    m.weight.data = [[0.0] * 3] * 2


def _clip(max_norm):
    return optim.clip_grad_norm(nn.Linear(3, 2).parameters(), max_norm=max_norm)


def _one_step_then_backward(other):
    lstm = nn.LSTM(3, 2)
    lstm.forward(np.ones((1, 3)))
    lstm.backward(other, np.ones((1, 2)))


def _linear_after_forward():
    m = nn.Linear(3, 2)
    m.forward(np.ones((1, 3)))
    return m


def _lin():
    return nn.Linear(3, 3)


def _params():
    return nn.Linear(3, 2).parameters()


# (id, call, error class name in tapernn, substring of the message saying what was expected)
ROWS = [
    (
        "Linear(0, 3)",
        lambda: nn.Linear(0, 3),
        "ArgumentError",
        "input_size must be a positive integer, got 0",
    ),
    (
        "Linear(-1, 3)",
        lambda: nn.Linear(-1, 3),
        "ArgumentError",
        "input_size must be a positive integer, got -1",
    ),
    (
        "LSTM(3, -4)",
        lambda: nn.LSTM(3, -4),
        "ArgumentError",
        "output_size must be a positive integer, got -4",
    ),
    (
        "Sequencer (0, B, D) array",
        lambda: nn.Sequencer(nn.Linear(3, 2)).forward(np.zeros((0, 2, 3))),
        "ShapeError",
        "at least one step",
    ),
    (
        "Sequencer(LSTM) (0, B, D) array",
        lambda: nn.Sequencer(nn.LSTM(3, 2)).forward(np.zeros((0, 2, 3))),
        "ShapeError",
        "at least one step",
    ),
    (
        "manual_seed('abc')",
        lambda: tn.manual_seed("abc"),
        "ArgumentTypeError",
        "seed must be a non-negative integer, got 'abc'",
    ),
    (
        "manual_seed(-1)",
        lambda: tn.manual_seed(-1),
        "ArgumentError",
        "seed must be a non-negative integer, got -1",
    ),
    (
        "gradcheck int array",
        lambda: tn.gradcheck(lambda x: x * 2, np.arange(3)),
        "DTypeError",
        "at least one floating-point array",
    ),
    (
        "string array input",
        lambda: nn.Linear(3, 2).forward(np.array([["a", "b", "c"]])),
        "DTypeError",
        "numeric array (float, int or bool), got <U1",
    ),
    (
        "complex input",
        lambda: nn.Linear(3, 2).forward(np.ones((2, 3), complex)),
        "DTypeError",
        "complex",
    ),
    (
        "complex gradcheck",
        lambda: tn.gradcheck(tn.tanh, np.ones(3, complex)),
        "DTypeError",
        "complex",
    ),
    ("complex trace", lambda: tn.trace(tn.tanh, np.ones(3, complex)), "DTypeError", "complex"),
    (
        "factory returning the wrong thing",
        lambda: build_model("builtins:max"),
        "TapernnError",
        "must return (model, input, grad_output), got int",
    ),
    (
        "Linear(3.5, 2)",
        lambda: nn.Linear(3.5, 2),
        "ArgumentTypeError",
        "input_size must be a positive integer, got 3.5 (float)",
    ),
    (
        "Linear('3', 2)",
        lambda: nn.Linear("3", 2),
        "ArgumentTypeError",
        "input_size must be a positive integer, got '3' (str)",
    ),
    (
        "Linear(True, 2)",
        lambda: nn.Linear(True, 2),
        "ArgumentTypeError",
        "input_size must be a positive integer, got True (bool)",
    ),
    (
        "LSTM(3, peephole='no')",
        lambda: nn.LSTM(3, peephole="no"),
        "ArgumentTypeError",
        "peephole must be True or False, got 'no'",
    ),
    (
        "clip_grad_norm(max_norm=-1)",
        lambda: _clip(-1),
        "ArgumentError",
        "max_norm must be a positive number, got -1",
    ),
    ("Dropout(1.5)", lambda: nn.Dropout(1.5), "ArgumentError", "p must be in [0, 1), got 1.5"),
    (
        "Dropout('0.5')",
        lambda: nn.Dropout("0.5"),
        "ArgumentTypeError",
        "p must be a number in [0, 1), got '0.5'",
    ),
    (
        "remember('sometimes')",
        lambda: nn.Sequencer(nn.LSTM(3, 3)).remember("sometimes"),
        "ArgumentError",
        "mode must be one of 'both', 'train', 'eval', 'neither', got 'sometimes'",
    ),
    (
        "set_passes('dce')",
        lambda: nn.Linear(3, 2).set_passes("dce"),
        "ArgumentTypeError",
        "a pass list is a list of functions Graph -> Graph, got str",
    ),
    (
        "set_default_passes(['dce'])",
        lambda: tn.set_default_passes(["dce"]),
        "ArgumentTypeError",
        "pass 0 is 'dce' (str)",
    ),
    (
        "SGD(lr=-1)",
        lambda: optim.SGD(_params(), lr=-1),
        "ArgumentError",
        "lr must be a positive number, got -1",
    ),
    (
        "SGD(lr='0.1')",
        lambda: optim.SGD(_params(), lr="0.1"),
        "ArgumentTypeError",
        "lr must be a positive number, got '0.1'",
    ),
    (
        "SGD(momentum=-0.5)",
        lambda: optim.SGD(_params(), lr=0.1, momentum=-0.5),
        "ArgumentError",
        "momentum must be in [0, 1), got -0.5",
    ),
    ("Adam([])", lambda: optim.Adam([]), "ArgumentError", "got no parameters"),
    (
        "Adam(module)",
        lambda: optim.Adam(nn.Linear(3, 2)),
        "ArgumentTypeError",
        "module.parameters()",
    ),
    (
        "Adam(betas=(1, .9))",
        lambda: optim.Adam(_params(), betas=(1.0, 0.9)),
        "ArgumentError",
        "betas[0] must be in [0, 1), got 1.0",
    ),
    (
        "Repeater(m, 0)",
        lambda: nn.Repeater(nn.Linear(3, 2), 0),
        "ArgumentError",
        "n_step must be a positive integer, got 0",
    ),
    (
        "unknown init=",
        lambda: nn.Module().parameter("w", (2, 2), init="bogus"),
        "ArgumentError",
        "init must be one of 'uniform', 'zeros', 'ones', 'normal' or an array, got 'bogus'",
    ),
    (
        "RNN(nonlinearity='x')",
        lambda: nn.RNN(3, 2, nonlinearity="x"),
        "ArgumentError",
        "nonlinearity must be one of 'tanh', 'relu', 'sigmoid', got 'x'",
    ),
    (
        "np.tanh(var) in a cell",
        lambda: nn.Sequencer(_NpTanhCell()).forward(np.ones((2, 1, 3))),
        "TracingError",
        "np.tanh cannot take a symbolic tn.Var (in '0', step 0); use tn.tanh",
    ),
    (
        "np.sum(var) in a cell",
        lambda: nn.Sequencer(_NpSumCell()).forward(np.ones((2, 1, 3))),
        "TracingError",
        "np.sum cannot take a symbolic tn.Var (in '0', step 0); use tn.sum",
    ),
    (
        "np.exp(parameter) in a cell",
        lambda: nn.Sequencer(_NpParamCell()).forward(np.ones((2, 1, 3))),
        "TracingError",
        "np.exp cannot take a symbolic tn.Var (in '0', step 0); use tn.exp",
    ),
    (
        "np.asarray(var)",
        lambda: tn.trace(lambda x: np.asarray(x), np.ones(3)),
        "TracingError",
        "a symbolic tn.Var has no values",
    ),
    (
        "set_initial_state of the wrong batch",
        lambda: _seq_with_initial((5, 2)),
        "ShapeError",
        "initial state 'h' given to set_initial_state has shape (5, 2), but this input needs (4, 2)",
    ),
    (
        "set_initial_state of the wrong size",
        lambda: nn.LSTM(3, 2).set_initial_state((np.zeros((4, 7)), np.zeros((4, 7)))),
        "ShapeError",
        "state 'h' must have shape (2,) or (batch, 2), got (4, 7)",
    ),
    (
        "update_parameters('0.1')",
        lambda: nn.Linear(3, 2).update_parameters("0.1"),
        "ArgumentTypeError",
        "lr must be a number, got '0.1'",
    ),
    (
        "rebound parameter of the wrong shape",
        _rebind_weight,
        "ShapeError",
        "parameter 'weight' has shape (2, 3); cannot rebind its .data to shape (5, 5)",
    ),
    (
        "rebound parameter to a list",
        _rebind_to_list,
        "ArgumentTypeError",
        "parameter 'weight': .data must be a numpy array, got list",
    ),
    (
        "Linear(rng='abc')",
        lambda: nn.Linear(3, 2, rng="abc"),
        "ArgumentTypeError",
        "rng must be a numpy.random.Generator or None, got 'abc'",
    ),
    (
        "Sequencer(3)",
        lambda: nn.Sequencer(3),
        "ArgumentTypeError",
        "module must be an nn.Module, got 3 (int)",
    ),
    (
        "Container.get out of range",
        lambda: nn.Sequential(nn.Identity()).get(3),
        "ValueRangeError",
        "index 3 is out of range",
    ),
    (
        "max_bptt_step(0)",
        lambda: nn.LSTM(3, 3).max_bptt_step(0),
        "ArgumentError",
        "rho must be a positive integer or None, got 0",
    ),
    (
        "SequencerCriterion(Linear)",
        lambda: nn.SequencerCriterion(nn.Linear(3, 2)),
        "ArgumentTypeError",
        "criterion must be an nn.Criterion, got nn.Linear(3 -> 2)",
    ),
    (
        "BCECriterion(weights='abc')",
        lambda: nn.BCECriterion(weights="abc"),
        "ArgumentTypeError",
        "weights must be None or a 1-D array of numbers, got 'abc'",
    ),
    (
        "Recurrent.mask_zero()",
        lambda: nn.Recurrent(3, _lin(), _lin()).mask_zero(),
        "ArgumentTypeError",
        "nn.Recurrent does not support mask_zero",
    ),
    (
        "var[1.5]",
        lambda: tn.trace(lambda x: x[1.5], np.ones(3)),
        "ArgumentTypeError",
        "unsupported index 1.5",
    ),
    (
        "grad(wrt=[1.5])",
        lambda: tn.grad(tn.trace(tn.sum, np.ones(3)), wrt=[1.5]),
        "ArgumentTypeError",
        "wrt entries are input nodes, indices or names, got 1.5",
    ),
    (
        "step-wise backward with another input",
        lambda: _one_step_then_backward(np.full((1, 3), 5.0)),
        "StateError",
        "expected the input of step 0 (the latest step not yet backwarded)",
    ),
    (
        "tn.compile(passes='dce')",
        lambda: tn.compile(tn.trace(tn.tanh, np.ones(3)), passes="dce"),
        "ArgumentTypeError",
        "a pass list is a list of functions Graph -> Graph, got str",
    ),
    (
        "tn.trace(3)",
        lambda: tn.trace(3, np.ones(3)),
        "TracingError",
        "tn.trace takes a function of Vars first, got int",
    ),
    (
        "tn.gradcheck(3)",
        lambda: tn.gradcheck(3, np.ones(3)),
        "ArgumentTypeError",
        "tn.gradcheck takes a function of Vars first, got int",
    ),
    (
        "tn.gradcheck(eps=-1)",
        lambda: tn.gradcheck(tn.tanh, np.ones(3), eps=-1),
        "ArgumentError",
        "eps must be a positive number, got -1",
    ),
    (
        "grad(wrt=['nope'])",
        lambda: tn.grad(tn.trace(tn.sum, np.ones(3)), wrt=["nope"]),
        "ArgumentError",
        "graph has no input named 'nope'",
    ),
    (
        "backward(grad_output='abc')",
        lambda: _linear_after_forward().backward(np.ones((1, 3)), "abc"),
        "DTypeError",
        "grad_output: expected a numeric array (float, int or bool), got <U3",
    ),
    (
        "load_state_dict(3)",
        lambda: nn.Linear(3, 2).load_state_dict(3),
        "ArgumentTypeError",
        "expected a dict of arrays (from state_dict()), got 3 (int)",
    ),
    (
        "get_hidden_state('a')",
        lambda: nn.LSTM(3, 2).get_hidden_state("a"),
        "ArgumentTypeError",
        "t must be an integer, got 'a' (str)",
    ),
    (
        "set_grad_hidden_state('a', ...)",
        lambda: nn.LSTM(3, 2).set_grad_hidden_state("a", (np.zeros(2), np.zeros(2))),
        "ArgumentTypeError",
        "t must be an integer, got 'a' (str)",
    ),
    (
        "set_initial_state(None)",
        lambda: nn.LSTM(3, 2).set_initial_state(None),
        "ArgumentTypeError",
        "expected a tuple of 2 state arrays ('h', 'c'), got None",
    ),
    (
        "set_initial_state(strings)",
        lambda: nn.LSTM(3, 2).set_initial_state(("a", "b")),
        "DTypeError",
        "expected a numeric array (float, int or bool), got <U1",
    ),
    (
        "reset(stdv=-1)",
        lambda: nn.Linear(3, 2).reset(-1),
        "ArgumentError",
        "stdv must be a non-negative number, got -1",
    ),
    (
        "parameter of shape (-1, 2)",
        lambda: nn.Module().parameter("w", (-1, 2)),
        "ArgumentError",
        "parameter 'w' shape must be a non-negative integer, got -1",
    ),
    (
        "traced fn returning a str",
        lambda: tn.trace(lambda x: "y", np.ones(3)),
        "TracingError",
        "traced functions must return Vars",
    ),
]


@pytest.mark.parametrize(
    "call, cls_name, expected", [pytest.param(c, k, s, id=i) for i, c, k, s in ROWS]
)
def test_bad_input_raises_a_clear_tapernn_error(call, cls_name, expected):
    cls = getattr(tn, cls_name)
    with pytest.raises(tn.TapernnError) as e:
        call()
    assert isinstance(e.value, cls), f"{type(e.value).__name__}: {e.value}"
    assert expected in str(e.value)


def test_argument_errors_stay_value_and_type_errors():
    """Code written against the old plain ValueError/TypeError keeps catching them."""
    with pytest.raises(ValueError):
        nn.Dropout(2)
    with pytest.raises(TypeError):
        nn.Linear("3", 2)
    with pytest.raises(TypeError):
        nn.Sequencer(nn.Linear(3, 3)).set_passes("dce")
    assert issubclass(tn.ArgumentTypeError, tn.ArgumentError)


def test_graph_command_reports_a_bad_factory_in_one_line(tmp_path, capsys):
    assert cli_main(["graph", "--model", "builtins:max", "-o", str(tmp_path / "g.dot")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must return (model, input, grad_output)" in err[0]


# ---- behaviours that replace silent wrong answers ----------------------------------------
