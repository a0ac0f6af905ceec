"""Every bad input raises a TapernnError subclass saying what was expected (API.md section 8):
one table row per bad call (issue 15), a sweep of the nn constructors' sizes, flags,
probabilities, modes and module arguments, and the behaviours that replace silent wrong answers
(Linear.backward with a new input, NaN inputs without leaked NumPy warnings)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn, optim
from tapernn.cli import main as cli_main
from tapernn.models import build_model


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


def _params():
    return nn.Linear(3, 2).parameters()


# (id, call, error class name in tapernn, substring of the message saying what was expected)
ROWS = [
    ("Linear(0, 3)", lambda: nn.Linear(0, 3), "ArgumentError",
     "input_size must be a positive integer, got 0"),
    ("Linear(-1, 3)", lambda: nn.Linear(-1, 3), "ArgumentError",
     "input_size must be a positive integer, got -1"),
    ("LSTM(3, -4)", lambda: nn.LSTM(3, -4), "ArgumentError",
     "output_size must be a positive integer, got -4"),
    ("Sequencer (0, B, D) array", lambda: nn.Sequencer(nn.Linear(3, 2)).forward(np.zeros((0, 2, 3))),
     "ShapeError", "at least one step"),
    ("Sequencer(LSTM) (0, B, D) array",
     lambda: nn.Sequencer(nn.LSTM(3, 2)).forward(np.zeros((0, 2, 3))), "ShapeError",
     "at least one step"),
    ("manual_seed('abc')", lambda: tn.manual_seed("abc"), "ArgumentTypeError",
     "seed must be a non-negative integer, got 'abc'"),
    ("manual_seed(-1)", lambda: tn.manual_seed(-1), "ArgumentError",
     "seed must be a non-negative integer, got -1"),
    ("gradcheck int array", lambda: tn.gradcheck(lambda x: x * 2, np.arange(3)), "DTypeError",
     "at least one floating-point array"),
    ("string array input", lambda: nn.Linear(3, 2).forward(np.array([["a", "b", "c"]])),
     "DTypeError", "numeric array (float, int or bool), got <U1"),
    ("complex input", lambda: nn.Linear(3, 2).forward(np.ones((2, 3), complex)), "DTypeError",
     "complex"),
    ("complex gradcheck", lambda: tn.gradcheck(tn.tanh, np.ones(3, complex)), "DTypeError",
     "complex"),
    ("complex trace", lambda: tn.trace(tn.tanh, np.ones(3, complex)), "DTypeError", "complex"),
    ("factory returning the wrong thing", lambda: build_model("builtins:max"), "TapernnError",
     "must return (model, input, grad_output), got int"),
    ("Linear(3.5, 2)", lambda: nn.Linear(3.5, 2), "ArgumentTypeError",
     "input_size must be a positive integer, got 3.5 (float)"),
    ("Linear('3', 2)", lambda: nn.Linear("3", 2), "ArgumentTypeError",
     "input_size must be a positive integer, got '3' (str)"),
    ("Linear(True, 2)", lambda: nn.Linear(True, 2), "ArgumentTypeError",
     "input_size must be a positive integer, got True (bool)"),
    ("LSTM(3, peephole='no')", lambda: nn.LSTM(3, peephole="no"), "ArgumentTypeError",
     "peephole must be True or False, got 'no'"),
    ("clip_grad_norm(max_norm=-1)", lambda: _clip(-1), "ArgumentError",
     "max_norm must be a positive number, got -1"),
    ("Dropout(1.5)", lambda: nn.Dropout(1.5), "ArgumentError", "p must be in [0, 1), got 1.5"),
    ("Dropout('0.5')", lambda: nn.Dropout("0.5"), "ArgumentTypeError",
     "p must be a number in [0, 1), got '0.5'"),
    ("remember('sometimes')", lambda: nn.Sequencer(nn.LSTM(3, 3)).remember("sometimes"),
     "ArgumentError", "mode must be one of 'both', 'train', 'eval', 'neither', got 'sometimes'"),
    ("set_passes('dce')", lambda: nn.Linear(3, 2).set_passes("dce"), "ArgumentTypeError",
     "a pass list is a list of functions Graph -> Graph, got str"),
    ("set_default_passes(['dce'])", lambda: tn.set_default_passes(["dce"]), "ArgumentTypeError",
     "pass 0 is 'dce' (str)"),
    ("SGD(lr=-1)", lambda: optim.SGD(_params(), lr=-1), "ArgumentError",
     "lr must be a positive number, got -1"),
    ("SGD(lr='0.1')", lambda: optim.SGD(_params(), lr="0.1"), "ArgumentTypeError",
     "lr must be a positive number, got '0.1'"),
    ("SGD(momentum=-0.5)", lambda: optim.SGD(_params(), lr=0.1, momentum=-0.5), "ArgumentError",
     "momentum must be in [0, 1), got -0.5"),
    ("Adam([])", lambda: optim.Adam([]), "ArgumentError", "got no parameters"),
    ("Adam(module)", lambda: optim.Adam(nn.Linear(3, 2)), "ArgumentTypeError",
     "module.parameters()"),
    ("Adam(betas=(1, .9))", lambda: optim.Adam(_params(), betas=(1.0, 0.9)), "ArgumentError",
     "betas[0] must be in [0, 1), got 1.0"),
    ("Repeater(m, 0)", lambda: nn.Repeater(nn.Linear(3, 2), 0), "ArgumentError",
     "n_step must be a positive integer, got 0"),
    ("unknown init=", lambda: nn.Module().parameter("w", (2, 2), init="bogus"), "ArgumentError",
     "init must be one of 'uniform', 'zeros', 'ones', 'normal' or an array, got 'bogus'"),
    ("RNN(nonlinearity='x')", lambda: nn.RNN(3, 2, nonlinearity="x"), "ArgumentError",
     "nonlinearity must be one of 'tanh', 'relu', 'sigmoid', got 'x'"),
    ("np.tanh(var) in a cell", lambda: nn.Sequencer(_NpTanhCell()).forward(np.ones((2, 1, 3))),
     "TracingError", "np.tanh cannot take a symbolic tn.Var (in '0', step 0); use tn.tanh"),
    ("np.sum(var) in a cell", lambda: nn.Sequencer(_NpSumCell()).forward(np.ones((2, 1, 3))),
     "TracingError", "np.sum cannot take a symbolic tn.Var (in '0', step 0); use tn.sum"),
    ("np.exp(parameter) in a cell",
     lambda: nn.Sequencer(_NpParamCell()).forward(np.ones((2, 1, 3))), "TracingError",
     "np.exp cannot take a symbolic tn.Var (in '0', step 0); use tn.exp"),
    ("np.asarray(var)", lambda: tn.trace(lambda x: np.asarray(x), np.ones(3)), "TracingError",
     "a symbolic tn.Var has no values"),
    ("set_initial_state of the wrong batch", lambda: _seq_with_initial((5, 2)), "ShapeError",
     "initial state 'h' given to set_initial_state has shape (5, 2), but this input needs (4, 2)"),
    ("set_initial_state of the wrong size", lambda: nn.LSTM(3, 2).set_initial_state(
        (np.zeros((4, 7)), np.zeros((4, 7)))), "ShapeError",
     "state 'h' must have shape (2,) or (batch, 2), got (4, 7)"),
    ("update_parameters('0.1')", lambda: nn.Linear(3, 2).update_parameters("0.1"),
     "ArgumentTypeError", "lr must be a number, got '0.1'"),
    ("rebound parameter of the wrong shape", _rebind_weight, "ShapeError",
     "parameter 'weight' has shape (2, 3); cannot rebind its .data to shape (5, 5)"),
    ("rebound parameter to a list", _rebind_to_list, "ArgumentTypeError",
     "parameter 'weight': .data must be a numpy array, got list"),
    ("Linear(rng='abc')", lambda: nn.Linear(3, 2, rng="abc"), "ArgumentTypeError",
     "rng must be a numpy.random.Generator or None, got 'abc'"),
    ("Sequencer(3)", lambda: nn.Sequencer(3), "ArgumentTypeError",
     "module must be an nn.Module, got 3 (int)"),
    ("Container.get out of range", lambda: nn.Sequential(nn.Identity()).get(3), "ValueRangeError",
     "index 3 is out of range"),
    ("max_bptt_step(0)", lambda: nn.LSTM(3, 3).max_bptt_step(0), "ArgumentError",
     "rho must be a positive integer or None, got 0"),
    ("SequencerCriterion(Linear)", lambda: nn.SequencerCriterion(nn.Linear(3, 2)),
     "ArgumentTypeError", "criterion must be an nn.Criterion, got nn.Linear(3 -> 2)"),
    ("BCECriterion(weights='abc')", lambda: nn.BCECriterion(weights="abc"), "ArgumentTypeError",
     "weights must be None or a 1-D array of numbers, got 'abc'"),
    ("Recurrent.mask_zero()", lambda: nn.Recurrent(3, _lin(), _lin()).mask_zero(),
     "ArgumentTypeError", "nn.Recurrent does not support mask_zero"),
    ("var[1.5]", lambda: tn.trace(lambda x: x[1.5], np.ones(3)), "ArgumentTypeError",
     "unsupported index 1.5"),
    ("grad(wrt=[1.5])", lambda: tn.grad(tn.trace(tn.sum, np.ones(3)), wrt=[1.5]),
     "ArgumentTypeError", "wrt entries are input nodes, indices or names, got 1.5"),
    ("step-wise backward with another input", lambda: _one_step_then_backward(np.full((1, 3), 5.)),
     "StateError", "expected the input of step 0 (the latest step not yet backwarded)"),
    ("tn.compile(passes='dce')", lambda: tn.compile(tn.trace(tn.tanh, np.ones(3)), passes="dce"),
     "ArgumentTypeError", "a pass list is a list of functions Graph -> Graph, got str"),
    ("tn.trace(3)", lambda: tn.trace(3, np.ones(3)), "TracingError",
     "tn.trace takes a function of Vars first, got int"),
    ("tn.gradcheck(3)", lambda: tn.gradcheck(3, np.ones(3)), "ArgumentTypeError",
     "tn.gradcheck takes a function of Vars first, got int"),
    ("tn.gradcheck(eps=-1)", lambda: tn.gradcheck(tn.tanh, np.ones(3), eps=-1), "ArgumentError",
     "eps must be a positive number, got -1"),
    ("grad(wrt=['nope'])", lambda: tn.grad(tn.trace(tn.sum, np.ones(3)), wrt=["nope"]),
     "ArgumentError", "graph has no input named 'nope'"),
    ("backward(grad_output='abc')", lambda: _linear_after_forward().backward(np.ones((1, 3)), "abc"),
     "DTypeError", "grad_output: expected a numeric array (float, int or bool), got <U3"),
    ("load_state_dict(3)", lambda: nn.Linear(3, 2).load_state_dict(3), "ArgumentTypeError",
     "expected a dict of arrays (from state_dict()), got 3 (int)"),
    ("get_hidden_state('a')", lambda: nn.LSTM(3, 2).get_hidden_state("a"), "ArgumentTypeError",
     "t must be an integer, got 'a' (str)"),
    ("set_grad_hidden_state('a', ...)",
     lambda: nn.LSTM(3, 2).set_grad_hidden_state("a", (np.zeros(2), np.zeros(2))),
     "ArgumentTypeError", "t must be an integer, got 'a' (str)"),
    ("set_initial_state(None)", lambda: nn.LSTM(3, 2).set_initial_state(None), "ArgumentTypeError",
     "expected a tuple of 2 state arrays ('h', 'c'), got None"),
    ("set_initial_state(strings)", lambda: nn.LSTM(3, 2).set_initial_state(("a", "b")),
     "DTypeError", "expected a numeric array (float, int or bool), got <U1"),
    ("reset(stdv=-1)", lambda: nn.Linear(3, 2).reset(-1), "ArgumentError",
     "stdv must be a non-negative number, got -1"),
    ("parameter of shape (-1, 2)", lambda: nn.Module().parameter("w", (-1, 2)), "ArgumentError",
     "parameter 'w' shape must be a non-negative integer, got -1"),
    ("traced fn returning a str", lambda: tn.trace(lambda x: "y", np.ones(3)), "TracingError",
     "traced functions must return Vars"),
]


@pytest.mark.parametrize("call, cls_name, expected",
                         [pytest.param(c, k, s, id=i) for i, c, k, s in ROWS])
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


# ---- the constructor sweep -------------------------------------------------------------------

def _lin():
    return nn.Linear(3, 3)


SIZES = [  # (id, make(value), can be None)
    ("Linear.input_size", lambda v: nn.Linear(v, 2), False),
    ("Linear.output_size", lambda v: nn.Linear(3, v), False),
    ("LookupTable.n_index", lambda v: nn.LookupTable(v, 2), False),
    ("LookupTable.n_output", lambda v: nn.LookupTable(4, v), False),
    ("LookupTableMaskZero.n_index", lambda v: nn.LookupTableMaskZero(v, 2), False),
    ("LSTM.input_size", lambda v: nn.LSTM(v, 2), False),
    ("LSTM.output_size", lambda v: nn.LSTM(3, v), True),
    ("FastLSTM.input_size", lambda v: nn.FastLSTM(v, 2), False),
    ("FastLSTM.output_size", lambda v: nn.FastLSTM(3, v), False),
    ("GRU.input_size", lambda v: nn.GRU(v, 2), False),
    ("GRU.output_size", lambda v: nn.GRU(3, v), False),
    ("RNN.input_size", lambda v: nn.RNN(v, 2), False),
    ("RNN.output_size", lambda v: nn.RNN(3, v), False),
    ("Recurrent.start", lambda v: nn.Recurrent(v, _lin(), _lin()), False),
    ("Repeater.n_step", lambda v: nn.Repeater(_lin(), v), False),
    ("Reshape.shape", lambda v: nn.Reshape(2, v), False),
    ("NarrowTable.length", lambda v: nn.NarrowTable(0, v), False),
    ("SplitTable.n_input_dims", lambda v: nn.SplitTable(0, v), True),
    ("JoinTable.n_input_dims", lambda v: nn.JoinTable(0, v), True),
    ("max_bptt_step.rho", lambda v: nn.LSTM(3, 3).max_bptt_step(v), True),
]
BAD_SIZES = [(0, "ArgumentError"), (-2, "ArgumentError"), (2.5, "ArgumentTypeError"),
             ("2", "ArgumentTypeError"), (True, "ArgumentTypeError"),
             (np.float64(2.0), "ArgumentTypeError")]


@pytest.mark.parametrize("make, nullable", [pytest.param(m, n, id=i) for i, m, n in SIZES])
@pytest.mark.parametrize("value, cls_name", BAD_SIZES + [(None, "ArgumentTypeError")],
                         ids=lambda v: repr(v))
def test_sizes_must_be_positive_integers(make, nullable, value, cls_name):
    if value is None and nullable:
        make(None)  # documented default
        return
    with pytest.raises(getattr(tn, cls_name), match="must be a positive integer"):
        make(value)


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m, _ in SIZES])
def test_sizes_accept_numpy_integers(make):
    for v in (np.int64(2), np.int32(2), np.uint8(2), 2):
        make(v)


def test_numpy_integer_sizes_become_python_ints():
    m = nn.Linear(np.int64(3), np.int32(2))
    assert type(m.input_size) is int and m.describe() == "nn.Linear(3 -> 2)"
    assert m.forward(np.ones((1, 3))).shape == (1, 2)


INDICES = [  # any integer, negative allowed
    ("SplitTable.dim", lambda v: nn.SplitTable(v)),
    ("JoinTable.dim", lambda v: nn.JoinTable(v)),
    ("SelectTable.index", lambda v: nn.SelectTable(v)),
    ("NarrowTable.offset", lambda v: nn.NarrowTable(v, 1)),
    ("ClassNLLCriterion.ignore_index", lambda v: nn.ClassNLLCriterion(ignore_index=v)),
    ("Container.get", lambda v: nn.Sequential(nn.Identity()).get(v)),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in INDICES])
def test_indices_must_be_integers(make):
    make(np.int64(-1))
    for bad in (1.5, "0", True, None):
        with pytest.raises(tn.ArgumentTypeError, match="must be an integer"):
            make(bad)


FLAGS = [
    ("Linear.bias", lambda v: nn.Linear(3, 2, bias=v)),
    ("LSTM.peephole", lambda v: nn.LSTM(3, 2, peephole=v)),
    ("GRU.reset_after", lambda v: nn.GRU(3, 2, reset_after=v)),
    ("MSECriterion.size_average", lambda v: nn.MSECriterion(size_average=v)),
    ("BCECriterion.size_average", lambda v: nn.BCECriterion(size_average=v)),
    ("ClassNLLCriterion.size_average", lambda v: nn.ClassNLLCriterion(size_average=v)),
    ("CrossEntropyCriterion.size_average", lambda v: nn.CrossEntropyCriterion(size_average=v)),
    ("SequencerCriterion.size_average",
     lambda v: nn.SequencerCriterion(nn.MSECriterion(), size_average=v)),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in FLAGS])
def test_flags_must_be_bools(make):
    make(True), make(False), make(np.bool_(True))
    for bad in ("no", "False", 1, None, 0.0):
        with pytest.raises(tn.ArgumentTypeError, match="must be True or False"):
            make(bad)


def test_dropout_probability():
    for ok in (0, 0.0, 0.5, np.float32(0.25), 0.999):
        assert nn.Dropout(ok).p == float(ok)
    for bad in (-0.1, 1, 1.0, 7, float("nan"), float("inf")):
        with pytest.raises(tn.ArgumentError, match=r"p must be in \[0, 1\)"):
            nn.Dropout(bad)
    for bad in ("0.5", None, True, [0.5]):
        with pytest.raises(tn.ArgumentTypeError, match="must be a number"):
            nn.Dropout(bad)


def test_modes_and_choices():
    seq = nn.Sequencer(nn.LSTM(3, 3))
    for mode in ("both", "train", "eval", "neither"):
        seq.remember(mode)
    with pytest.raises(tn.ArgumentTypeError, match="mode must be one of"):
        seq.remember(True)
    for f in ("tanh", "relu", "sigmoid"):
        nn.RNN(3, 2, nonlinearity=f)
    with pytest.raises(tn.ArgumentTypeError, match="nonlinearity must be one of"):
        nn.RNN(3, 2, nonlinearity=None)


MODULE_ARGS = [
    ("Sequencer", lambda v: nn.Sequencer(v)),
    ("Repeater", lambda v: nn.Repeater(v, 2)),
    ("Recursor", lambda v: nn.Recursor(v)),
    ("MaskZero", lambda v: nn.MaskZero(v)),
    ("Sequential", lambda v: nn.Sequential(v)),
    ("Sequential.add", lambda v: nn.Sequential().add(v)),
    ("ConcatTable", lambda v: nn.ConcatTable(v)),
    ("ParallelTable", lambda v: nn.ParallelTable(v)),
    ("BiSequencer", lambda v: nn.BiSequencer(v)),
    ("BiSequencer.merge", lambda v: nn.BiSequencer(nn.LSTM(3, 3), merge=v)),
    ("BiSequencerLM", lambda v: nn.BiSequencerLM(v)),
    ("Recurrent.input", lambda v: nn.Recurrent(3, v, _lin())),
    ("Recurrent.transfer", lambda v: nn.Recurrent(3, _lin(), _lin(), transfer=v)),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in MODULE_ARGS])
def test_module_arguments_must_be_modules(make):
    for bad in (3, "lstm", nn.LSTM):  # the class instead of an instance is a common slip
        with pytest.raises(tn.ArgumentTypeError, match="must be an nn.Module"):
            make(bad)


CRITERION_ARGS = [
    ("SequencerCriterion", lambda v: nn.SequencerCriterion(v)),
    ("RepeaterCriterion", lambda v: nn.RepeaterCriterion(v)),
    ("MaskZeroCriterion", lambda v: nn.MaskZeroCriterion(v)),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in CRITERION_ARGS])
def test_criterion_arguments_must_be_criteria(make):
    for bad in (nn.Linear(3, 2), "mse", nn.MSECriterion):
        with pytest.raises(tn.ArgumentTypeError, match="must be an nn.Criterion"):
            make(bad)


@pytest.mark.parametrize("make", [
    pytest.param(lambda r: nn.Linear(3, 2, rng=r), id="Linear"),
    pytest.param(lambda r: nn.LookupTable(3, 2, rng=r), id="LookupTable"),
    pytest.param(lambda r: nn.LSTM(3, 2, rng=r), id="LSTM"),
    pytest.param(lambda r: nn.FastLSTM(3, 2, rng=r), id="FastLSTM"),
    pytest.param(lambda r: nn.GRU(3, 2, rng=r), id="GRU"),
    pytest.param(lambda r: nn.RNN(3, 2, rng=r), id="RNN"),
    pytest.param(lambda r: nn.Dropout(0.5, rng=r), id="Dropout"),
])
def test_rng_arguments(make):
    make(None), make(np.random.default_rng(0))
    for bad in (0, "abc", np.random.RandomState(0)):
        with pytest.raises(tn.ArgumentTypeError, match="numpy.random.Generator"):
            make(bad)


def test_optimizer_numbers():
    for bad, cls in ((0, tn.ArgumentError), (float("nan"), tn.ArgumentError),
                     ("1", tn.ArgumentTypeError), (None, tn.ArgumentTypeError)):
        with pytest.raises(cls, match="lr must be a positive number"):
            optim.SGD(_params(), lr=bad)
        with pytest.raises(cls, match="lr must be a positive number"):
            optim.Adam(_params(), lr=bad)
    with pytest.raises(tn.ArgumentError, match="eps must be a positive number"):
        optim.Adam(_params(), eps=-1)
    with pytest.raises(tn.ArgumentTypeError, match="Parameter"):
        optim.SGD([np.zeros(3)], lr=0.1)
    for bad, cls in ((0, tn.ArgumentError), ("1", tn.ArgumentTypeError)):
        with pytest.raises(cls, match="max_norm must be a positive number"):
            _clip(bad)
    optim.SGD(_params(), lr=np.float32(0.1), momentum=0.9)
    assert _clip(np.float64(1.0)) >= 0


def test_update_parameters_takes_any_real_number():
    m = nn.Linear(3, 2)
    m.weight.grad[...] = 1.0
    before = m.weight.data.copy()
    m.update_parameters(np.float32(-0.5))  # a negative rate is gradient ascent, as in Torch7
    np.testing.assert_allclose(m.weight.data, before + 0.5)
    for bad in (None, "0.1", float("nan")):
        with pytest.raises(tn.ArgumentError, match="lr must be a"):
            m.update_parameters(bad)


def test_rebinding_a_parameter_to_the_same_shape_still_works():
    m = nn.Linear(3, 2)
    m.weight.data = np.ones((2, 3))
    np.testing.assert_allclose(m.forward(np.ones((1, 3))), 3 + m.bias.data[None])


# ---- behaviours that replace silent wrong answers ----------------------------------------

def test_linear_backward_with_a_new_input_uses_it_as_torch7():
    """Torch7's Linear:backward(x2, g) accumulates g^T x2 whatever the last forward saw."""
    rng = np.random.default_rng(0)
    m = nn.Linear(3, 2)
    x1, x2, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    y1 = m.forward(x1)
    m.zero_grad_parameters()
    gx = m.backward(x2, g)
    np.testing.assert_allclose(m.weight.grad, g.T @ x2, rtol=1e-12)
    np.testing.assert_allclose(m.bias.grad, g.sum(0), rtol=1e-12)
    np.testing.assert_allclose(gx, g @ m.weight.data, rtol=1e-12)
    np.testing.assert_array_equal(m.output, y1)  # backward does not rewrite the output
    m.backward(x1, g)  # and the forward's own input still gives its gradient (accumulated)
    np.testing.assert_allclose(m.weight.grad, g.T @ x2 + g.T @ x1, rtol=1e-12)


def test_backward_with_an_input_of_another_shape_is_refused():
    m = nn.Linear(3, 2)
    m.forward(np.ones((4, 3)))
    with pytest.raises(tn.ShapeError, match=r"backward input has shape \(5, 3\).*\(4, 3\)"):
        m.backward(np.ones((5, 3)), np.ones((5, 2)))


def test_tanh_backward_with_a_new_input_is_the_gradient_at_that_input():
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    x1, x2, g = rng.standard_normal((2, 3)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    model.forward(x1)
    model.zero_grad_parameters()
    gx = model.backward(x2, g)
    w, b = model[0].weight.data, model[0].bias.data
    d = g * (1 - np.tanh(x2 @ w.T + b) ** 2)
    np.testing.assert_allclose(gx, d @ w, rtol=1e-12)
    np.testing.assert_allclose(model[0].weight.grad, d.T @ x2, rtol=1e-12)


def test_dropout_backward_with_a_new_input_reuses_the_forward_mask():
    tn.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5))
    x1, x2 = np.ones((2, 4)), np.full((2, 4), 2.0)
    y = model.forward(x1)
    mask = (y != 0).astype(float) * 2.0
    gx = model.backward(x2, np.ones((2, 6)))
    np.testing.assert_allclose(gx, mask @ model[0].weight.data, rtol=1e-12)


def test_nan_inputs_leak_no_numpy_warnings():
    x = np.full((2, 1, 3), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = nn.Sequencer(nn.LSTM(3, 2)).forward(x)
        assert np.isnan(out).all()
        model = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
        model.forward(np.full((2, 3), np.inf))
        model.backward(np.full((2, 3), np.inf), np.ones((2, 2)))


@pytest.mark.parametrize("crit, target", [
    (nn.MSECriterion(), np.zeros((2, 3))),
    (nn.CrossEntropyCriterion(), np.array([0, 1])),
    (nn.ClassNLLCriterion(), np.array([0, 1])),
    (nn.SequencerCriterion(nn.MSECriterion()), np.zeros((2, 3))),
])
def test_nan_in_a_loss_raises_without_numpy_warnings(crit, target):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(tn.NumericError, match="NaN"):
            crit.forward(np.full((2, 3), np.nan), target)


# ---- every public nn constructor, found by introspection ---------------------------------

_SAMPLES = {  # a valid value per argument name
    "input_size": 3, "output_size": 3, "hidden_size": 3, "n_index": 4, "n_output": 3,
    "n_step": 2, "start": 3, "dim": 0, "index": 0, "offset": 0, "length": 1,
    "module": lambda: nn.Linear(3, 3), "input": lambda: nn.Linear(3, 3),
    "feedback": lambda: nn.Linear(3, 3), "fwd": lambda: nn.LSTM(3, 3),
    "criterion": lambda: nn.MSECriterion(),
}
_SIZE_ARGS = {"input_size", "output_size", "hidden_size", "n_index", "n_output", "n_step",
              "length", "n_input_dims"}
_FLAG_ARGS = {"bias", "peephole", "reset_after", "size_average"}
_MODULE_ARGS = {"module", "fwd", "bwd", "merge", "input", "feedback", "transfer"}
_ABSTRACT = {"Module", "Container", "Criterion", "AbstractRecurrent", "Cell"}


def _public_constructors():
    import inspect

    out = []
    for name in nn.__all__:
        cls = getattr(nn, name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or name in _ABSTRACT:
            continue
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
        out.append((name, cls, params))
    return out


def _sample(name):
    value = _SAMPLES[name]
    return value() if callable(value) else value


@pytest.mark.parametrize("name, cls, params", [pytest.param(*c, id=c[0])
                                               for c in _public_constructors()])
def test_every_public_constructor_checks_its_arguments(name, cls, params):
    required = {p.name: _sample(p.name) for p in params if p.default is p.empty}
    cls(**required)  # the samples are valid
    checks = []
    for p in params:
        if p.name in _SIZE_ARGS:
            checks += [(p.name, bad, tn.ArgumentError) for bad in (0, -1, 2.5, True, "3")]
        elif p.name in _FLAG_ARGS:
            checks += [(p.name, bad, tn.ArgumentTypeError) for bad in ("no", 1, None)]
        elif p.name in _MODULE_ARGS or p.name == "criterion":
            checks += [(p.name, bad, tn.ArgumentTypeError) for bad in ("x", 3, nn.Linear)]
        elif p.name == "rng":
            checks += [(p.name, "abc", tn.ArgumentTypeError)]
        elif p.name == "p":
            checks += [(p.name, bad, tn.ArgumentError) for bad in (1.5, -1, "0.5")]
        elif p.name in ("dim", "index", "offset", "ignore_index"):
            checks += [(p.name, bad, tn.ArgumentTypeError) for bad in (1.5, "0", True)]
    for arg, bad, cls_expected in checks:
        kwargs = {**{k: _sample(k) for k in required}, arg: bad}
        with pytest.raises(cls_expected) as e:
            cls(**kwargs)
        assert arg in str(e.value) or "criterion" in str(e.value), str(e.value)


def test_the_constructor_sweep_reaches_the_known_modules():
    reached = {name for name, _, _ in _public_constructors()}
    assert {"Linear", "LSTM", "GRU", "RNN", "FastLSTM", "Recurrent", "Sequencer", "Repeater",
            "Recursor", "BiSequencer", "Dropout", "LookupTable", "SequencerCriterion",
            "ClassNLLCriterion", "NarrowTable", "SplitTable", "MaskZeroCriterion"} <= reached
