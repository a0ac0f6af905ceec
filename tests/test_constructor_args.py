"""The constructor sweep of issue 15: every public nn constructor checks its sizes (positive
integers, numpy integers accepted, bools refused), flags (bools), probabilities, modes, module,
criterion and generator arguments; optimiser numbers. Listed by hand, then found by introspection
so new modules are swept too."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn, optim


def _params():
    return nn.Linear(3, 2).parameters()


def _clip(max_norm):
    return optim.clip_grad_norm(nn.Linear(3, 2).parameters(), max_norm=max_norm)


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
BAD_SIZES = [
    (0, "ArgumentError"),
    (-2, "ArgumentError"),
    (2.5, "ArgumentTypeError"),
    ("2", "ArgumentTypeError"),
    (True, "ArgumentTypeError"),
    (np.float64(2.0), "ArgumentTypeError"),
]


@pytest.mark.parametrize("make, nullable", [pytest.param(m, n, id=i) for i, m, n in SIZES])
@pytest.mark.parametrize(
    "value, cls_name", BAD_SIZES + [(None, "ArgumentTypeError")], ids=lambda v: repr(v)
)
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
    (
        "SequencerCriterion.size_average",
        lambda v: nn.SequencerCriterion(nn.MSECriterion(), size_average=v),
    ),
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


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda r: nn.Linear(3, 2, rng=r), id="Linear"),
        pytest.param(lambda r: nn.LookupTable(3, 2, rng=r), id="LookupTable"),
        pytest.param(lambda r: nn.LSTM(3, 2, rng=r), id="LSTM"),
        pytest.param(lambda r: nn.FastLSTM(3, 2, rng=r), id="FastLSTM"),
        pytest.param(lambda r: nn.GRU(3, 2, rng=r), id="GRU"),
        pytest.param(lambda r: nn.RNN(3, 2, rng=r), id="RNN"),
        pytest.param(lambda r: nn.Dropout(0.5, rng=r), id="Dropout"),
    ],
)
def test_rng_arguments(make):
    make(None), make(np.random.default_rng(0))
    for bad in (0, "abc", np.random.RandomState(0)):
        with pytest.raises(tn.ArgumentTypeError, match="numpy.random.Generator"):
            make(bad)


def test_optimizer_numbers():
    for bad, cls in (
        (0, tn.ArgumentError),
        (float("nan"), tn.ArgumentError),
        ("1", tn.ArgumentTypeError),
        (None, tn.ArgumentTypeError),
    ):
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


# ---- every public nn constructor, found by introspection ---------------------------------

_SAMPLES = {  # a valid value per argument name
    "input_size": 3,
    "output_size": 3,
    "hidden_size": 3,
    "n_index": 4,
    "n_output": 3,
    "n_step": 2,
    "start": 3,
    "dim": 0,
    "index": 0,
    "offset": 0,
    "length": 1,
    "module": lambda: nn.Linear(3, 3),
    "input": lambda: nn.Linear(3, 3),
    "feedback": lambda: nn.Linear(3, 3),
    "fwd": lambda: nn.LSTM(3, 3),
    "criterion": lambda: nn.MSECriterion(),
    # issue 14's modules
    "addend": 1.0,
    "pad": 1,
    "constant": 2.0,
    "min_value": -1.0,
    "max_value": 1.0,
    "dimension": 0,
    "pos": 0,
    "n_features": 2,
    "n_input_dim": 1,
}
_SIZE_ARGS = {
    "input_size",
    "output_size",
    "hidden_size",
    "n_index",
    "n_output",
    "n_step",
    "length",
    "n_input_dims",
    "n_features",
}
_FLAG_ARGS = {
    "bias",
    "peephole",
    "reset_after",
    "size_average",
    "batch_first",
    "mask_zero",
    "scalar",
    "negate",
}
_MODULE_ARGS = {"module", "fwd", "bwd", "merge", "input", "feedback", "transfer"}
_SAMPLES.update(
    {
        "rnn": lambda: nn.Linear(3, 3),
        "action": lambda: nn.Linear(3, 3),
        "stdev": 0.1,
        "k": 2,
        "noise": lambda: np.ones(3),
    }
)
_MODULE_ARGS |= {"rnn", "action"}
_ABSTRACT = {"Module", "Container", "Criterion", "AbstractRecurrent", "Cell"}
_VARARGS = {"CMul": (4,), "View": (-1,), "Transpose": ((0, 1),)}  # sizes, dims as *args


def _public_constructors():
    import inspect

    out = []
    for name in nn.__all__:
        cls = getattr(nn, name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or name in _ABSTRACT:
            continue
        params = [
            p
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        out.append((name, cls, params))
    return out


def _sample(name):
    value = _SAMPLES[name]
    return value() if callable(value) else value


@pytest.mark.parametrize(
    "name, cls, params", [pytest.param(*c, id=c[0]) for c in _public_constructors()]
)
def test_every_public_constructor_checks_its_arguments(name, cls, params):
    required = {p.name: _sample(p.name) for p in params if p.default is p.empty}
    varargs = _VARARGS.get(name, ())
    cls(*varargs, **required)  # the samples are valid
    checks = []
    for p in params:
        if (name, p.name) == ("Narrow", "length"):  # Torch7: a negative length counts from the end
            checks += [(p.name, bad, tn.ArgumentError) for bad in (0, 2.5, True, "3")]
        elif p.name in _SIZE_ARGS:
            checks += [(p.name, bad, tn.ArgumentError) for bad in (0, -1, 2.5, True, "3")]
        elif p.name in _FLAG_ARGS:
            checks += [(p.name, bad, tn.ArgumentTypeError) for bad in ("no", 1, None)]
        elif p.name in _MODULE_ARGS or p.name == "criterion":
            checks += [(p.name, bad, tn.ArgumentTypeError) for bad in ("x", 3, nn.Linear)]
        elif p.name == "rng":
            checks += [(p.name, "abc", tn.ArgumentTypeError)]
        elif p.name == "p":
            checks += [(p.name, bad, tn.ArgumentError) for bad in (1.5, -1, "0.5")]
        elif p.name in ("dim", "index", "offset", "ignore_index", "dimension", "pos", "pad"):
            checks += [(p.name, bad, tn.ArgumentTypeError) for bad in (1.5, "0", True)]
    for arg, bad, cls_expected in checks:
        kwargs = {**{k: _sample(k) for k in required}, arg: bad}
        with pytest.raises(cls_expected) as e:
            cls(*varargs, **kwargs)
        assert arg in str(e.value) or "criterion" in str(e.value), str(e.value)


def test_the_constructor_sweep_reaches_the_known_modules():
    reached = {name for name, _, _ in _public_constructors()}
    assert {
        "Linear",
        "LSTM",
        "GRU",
        "RNN",
        "FastLSTM",
        "Recurrent",
        "Sequencer",
        "Repeater",
        "Recursor",
        "BiSequencer",
        "Dropout",
        "LookupTable",
        "SequencerCriterion",
        "ClassNLLCriterion",
        "NarrowTable",
        "SplitTable",
        "MaskZeroCriterion",
    } <= reached
