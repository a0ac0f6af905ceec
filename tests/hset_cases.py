"""The table of tests/test_hset_settings.py: one case per checked setting of a module class (its
constructor given the value, bad values with the error class the constructor raises, a good
value changing the output, FIXED or Same(value), how to run the module)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import tapernn as tn
from tapernn import nn
from tapernn.errors import ArgumentError as AE
from tapernn.errors import ArgumentTypeError as ATE
from tapernn.errors import DTypeError as DTE

NAN, INF = math.nan, math.inf
FIXED = "<fixed>"  # `good`: the setting is fixed at construction


@dataclass
class Same:
    """`good`: a value stored and used, computing the same by design (unroll, rho, ...), or
    not comparable with the value's (remember_mode's next call starts where the last ended)."""

    value: Any
    computes_the_same: bool = True


R = np.random.default_rng(0)
X = R.standard_normal((3, 4))
X3 = R.standard_normal((3, 1, 4))
SEQ = R.standard_normal((3, 2, 4))  # (T, B, D)
IDS = np.array([0, 2, 1])


class Fresh:
    """A good value made anew for each use (a generator: the model's and the oracle's alike)."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make


def value(v: Any) -> Any:
    return v.make() if isinstance(v, Fresh) else v


def seeded(fn: Callable) -> Callable:
    def run(model):
        tn.manual_seed(3)
        return fn(model)

    return run


def fwd(x: Any) -> Callable:
    return seeded(lambda model: model.forward(x))


def crit(x: Any, t: Any) -> Callable:
    return lambda model: model.forward(x, t)


def crit_grads(x: Any, t: Any) -> Callable:
    def run(model):
        return [model.forward(x, t), model.backward(x, t)]

    return run


FWD_X = fwd(X)


@dataclass
class Case:
    make: Callable[
        ..., nn.Module
    ]  # make(v): the constructor given v for the setting; make(): default
    setting: str
    bad: list  # (value, error class)
    good: Any  # a value changing the output, FIXED or Same(value)
    run: Callable = FWD_X  # model -> outputs
    wrap: Callable = field(default=lambda m: m)  # the model holding the module
    arg: str | None = None  # the constructor's name for it in messages (default: the setting)
    ctor: bool = True  # make(v) passes v to the constructor


def lstm_seq(m):
    return nn.Sequencer(m)


U = np.array([1.0, 2, 3, 4, 5])
NCE_IN = [R.standard_normal((3, 4)), np.array([0, 4, 2])]
PROBS = [R.random(3) * 0.3, R.random((3, 2)) * 0.3, R.random(3) * 0.2, R.random((3, 2)) * 0.2]
SCORES = [R.standard_normal((4, 3)), R.standard_normal((4, 1))]


def _ram(v=2):
    """tests/test_reinforce.py's recurrent attention model (D=3, H=5), n_step v."""
    glimpse = nn.Sequential(nn.ParallelTable(nn.Linear(3, 5), nn.Linear(2, 5)), nn.CAddTable())
    rnn = nn.Recurrent(5, glimpse, nn.Linear(5, 5), nn.Tanh())
    action = nn.Sequential(nn.Linear(5, 2), nn.ReinforceNormal(0.3))
    return nn.RecurrentAttention(rnn, action, v, 5)


def _nce(v=4, **kw):
    kw.setdefault("noise", U)
    kw.setdefault("z", 1.0)  # (z <= 0: estimated at the first call, from that call's draws)
    return nn.NCEModule(4, 5, v, **kw)


CASES = {
    "Dropout.p": Case(
        lambda v=0.5: nn.Dropout(v), "p", [(NAN, AE), (-0.5, AE), (1.0, AE), ("a", ATE)], 0.2
    ),
    "Dropout.rng": Case(
        lambda v=None: nn.Dropout(0.5, v),
        "rng",
        [(5, ATE)],
        Fresh(lambda: np.random.default_rng(7)),
    ),
    "HardTanh.min_value": Case(
        lambda v=-1.0: nn.HardTanh(v, 1.0), "min_value", [(NAN, AE), (2.0, AE), ("x", ATE)], -0.5
    ),
    "HardTanh.max_value": Case(
        lambda v=1.0: nn.HardTanh(-1.0, v), "max_value", [(INF, AE), (-2.0, AE)], 0.5
    ),
    "Clamp.min_value": Case(lambda v=-1.0: nn.Clamp(v, 1.0), "min_value", [(3.0, AE)], -0.25),
    "Clamp.max_value": Case(lambda v=1.0: nn.Clamp(-1.0, v), "max_value", [(NAN, AE)], 0.25),
    "AddConstant.constant": Case(lambda v=1.0: nn.AddConstant(v), "constant", [(NAN, AE)], 2.0),
    "MulConstant.constant": Case(lambda v=1.0: nn.MulConstant(v), "constant", [(None, ATE)], 2.0),
    "Power.constant": Case(lambda v=1.0: nn.Power(v), "constant", [(INF, AE)], 2.0),
    "SAdd.addend": Case(lambda v=1.0: nn.SAdd(v), "addend", [(NAN, AE)], 3.0),
    "SAdd.negate": Case(lambda v=False: nn.SAdd(1.0, v), "negate", [(1, ATE)], True),
    "LeakyReLU.negval": Case(lambda v=0.01: nn.LeakyReLU(v), "negval", [(INF, AE)], 0.3),
    "ELU.alpha": Case(lambda v=1.0: nn.ELU(v), "alpha", [(NAN, AE)], 0.5),
    "SoftPlus.beta": Case(
        lambda v=1.0: nn.SoftPlus(v), "beta", [(0.0, AE), (-1, AE), (NAN, AE)], 2.0
    ),
    "SoftPlus.threshold": Case(lambda v=20.0: nn.SoftPlus(1.0, v), "threshold", [(NAN, AE)], 0.5),
    "Narrow.dimension": Case(lambda v=1: nn.Narrow(v, 0, 2), "dimension", [(1.5, ATE)], 0),
    "Narrow.offset": Case(lambda v=0: nn.Narrow(1, v, 2), "offset", [("1", ATE)], 1),
    "Narrow.length": Case(lambda v=2: nn.Narrow(1, 0, v), "length", [(0, AE), (2.0, ATE)], 3),
    "Select.dimension": Case(lambda v=1: nn.Select(v, 1), "dimension", [(None, ATE)], 0),
    "Select.index": Case(lambda v=1: nn.Select(1, v), "index", [(1.0, ATE)], 2),
    "Squeeze.dim": Case(lambda v=1: nn.Squeeze(v), "dim", [("a", ATE)], 0, fwd(X3)),
    "Squeeze.n_input_dims": Case(
        lambda v=None: nn.Squeeze(0, v), "n_input_dims", [(0, AE)], 2, fwd(X3)
    ),
    "Unsqueeze.pos": Case(lambda v=0: nn.Unsqueeze(v), "pos", [(0.5, ATE)], 2),
    "Unsqueeze.n_input_dims": Case(
        lambda v=None: nn.Unsqueeze(0, v), "n_input_dims", [(-1, AE)], 1
    ),
    "Replicate.n_features": Case(lambda v=2: nn.Replicate(v), "n_features", [(0, AE)], 3),
    "Replicate.dim": Case(lambda v=0: nn.Replicate(2, v), "dim", [("0", ATE)], 1),
    "Replicate.n_dim": Case(lambda v=None: nn.Replicate(2, 0, v), "n_dim", [(0, AE)], 1),
    "Max.dimension": Case(lambda v=0: nn.Max(v), "dimension", [(0.0, ATE)], 1),
    "Max.n_input_dims": Case(lambda v=None: nn.Max(0, v), "n_input_dims", [(0, AE)], 1),
    "Sum.size_average": Case(lambda v=False: nn.Sum(0, None, v), "size_average", [(1, ATE)], True),
    "SplitTable.dim": Case(
        lambda v=0: nn.SplitTable(v),
        "dim",
        [(1.5, ATE)],
        1,
        wrap=lambda m: nn.Sequential(m, nn.JoinTable(0)),
    ),
    "SplitTable.n_input_dims": Case(
        lambda v=None: nn.SplitTable(0, v),
        "n_input_dims",
        [(0, AE)],
        1,
        wrap=lambda m: nn.Sequential(m, nn.JoinTable(0)),
    ),
    "JoinTable.dim": Case(lambda v=0: nn.JoinTable(v), "dim", [(1.5, ATE)], 1, fwd([X, X + 1])),
    "JoinTable.n_input_dims": Case(
        lambda v=None: nn.JoinTable(0, v), "n_input_dims", [(0, AE)], 1, fwd([X, X + 1])
    ),
    "SelectTable.index": Case(
        lambda v=1: nn.SelectTable(v), "index", [("a", ATE)], 0, fwd([X, X + 1])
    ),
    "NarrowTable.offset": Case(
        lambda v=0: nn.NarrowTable(v),
        "offset",
        [(None, ATE)],
        1,
        fwd([X, X + 1, X + 2]),
        wrap=lambda m: nn.Sequential(m, nn.JoinTable(0)),
    ),
    "NarrowTable.length": Case(
        lambda v=1: nn.NarrowTable(0, v),
        "length",
        [(0, AE)],
        2,
        fwd([X, X + 1, X + 2]),
        wrap=lambda m: nn.Sequential(m, nn.JoinTable(0)),
    ),
    "Padding.dim": Case(lambda v=1: nn.Padding(v, 2), "dim", [(1.0, ATE)], 0),
    "Padding.pad": Case(lambda v=2: nn.Padding(1, v), "pad", [(0, AE)], -2, fwd(X + 5)),
    "Padding.n_input_dim": Case(lambda v=None: nn.Padding(0, 2, v), "n_input_dim", [(0, AE)], 1),
    "Padding.value": Case(lambda v=0.0: nn.Padding(1, 2, None, v), "value", [(NAN, AE)], 1.5),
    "Padding.index": Case(lambda v=0: nn.Padding(1, 2, None, 0.0, v), "index", [(None, ATE)], 1),
    "View.size": Case(
        lambda v=(12,): nn.View(*v), "size", [((0,), AE), ((-1, -1), AE), ((2.5,), ATE)], (4, 3)
    ),
    "View.num_input_dims": Case(
        lambda: nn.View(-1), "num_input_dims", [(0, AE), (1.5, ATE)], 1, ctor=False
    ),
    "Reshape.shape": Case(
        lambda v=(12,): nn.Reshape(*v), "shape", [((0,), AE), ((2.5,), ATE)], (4, 3)
    ),
    "Transpose.permutations": Case(
        lambda v=((0, 1),): nn.Transpose(*v),
        "permutations",
        [(((0,),), ATE), ((("a", 1),), ATE)],
        ((1, 2),),
        fwd(R.standard_normal((3, 4, 2))),
    ),
    "CMul.size": Case(lambda v=(4,): nn.CMul(*v), "size", [((0,), AE), ((), AE)], FIXED),
    "Linear.input_size": Case(lambda v=4: nn.Linear(v, 3), "input_size", [(0, AE)], FIXED),
    "Linear.output_size": Case(lambda v=3: nn.Linear(4, v), "output_size", [(1.5, ATE)], FIXED),
    "Linear.has_bias": Case(
        lambda v=True: nn.Linear(4, 3, bias=v), "has_bias", [(1, ATE)], FIXED, arg="bias"
    ),
    "LookupTable.n_index": Case(
        lambda v=3: nn.LookupTable(v, 2), "n_index", [(0, AE)], FIXED, fwd(IDS)
    ),
    "LookupTable.n_output": Case(
        lambda v=2: nn.LookupTable(3, v), "n_output", [(None, ATE)], FIXED, fwd(IDS)
    ),
    "Add.input_size": Case(lambda v=4: nn.Add(v), "input_size", [(-1, AE)], FIXED),
    "Add.scalar": Case(lambda v=False: nn.Add(4, v), "scalar", [(0, ATE)], FIXED),
    "Euclidean.input_size": Case(lambda v=4: nn.Euclidean(v, 2), "input_size", [(0, AE)], FIXED),
    "Euclidean.output_size": Case(lambda v=2: nn.Euclidean(4, v), "output_size", [(0, AE)], FIXED),
    "LSTM.input_size": Case(
        lambda v=4: nn.LSTM(v, 3), "input_size", [(0, AE)], FIXED, fwd(SEQ), lstm_seq
    ),
    "LSTM.hidden_size": Case(
        lambda v=3: nn.LSTM(4, v),
        "hidden_size",
        [(-4, AE)],
        FIXED,
        fwd(SEQ),
        lstm_seq,
        arg="output_size",
    ),
    "LSTM.peephole": Case(
        lambda v=True: nn.LSTM(4, 3, peephole=v),
        "peephole",
        [("no", ATE)],
        FIXED,
        fwd(SEQ),
        lstm_seq,
    ),
    "LSTM.rho": Case(
        lambda: nn.LSTM(4, 3), "rho", [(0, AE), (1.5, ATE)], Same(2), fwd(SEQ), lstm_seq, ctor=False
    ),
    "GRU.reset_after": Case(
        lambda v=False: nn.GRU(4, 3, reset_after=v),
        "reset_after",
        [(None, ATE)],
        FIXED,
        fwd(SEQ),
        lstm_seq,
    ),
    "Recurrent.start_size": Case(
        lambda v=5: nn.Recurrent(v, nn.Linear(4, 5), nn.Linear(5, 5), nn.Tanh()),
        "start_size",
        [(0, AE), (1.5, ATE)],
        FIXED,
        fwd(SEQ),
        lstm_seq,
        arg="start (a size or a module)",
    ),
    "RNN.nonlinearity": Case(
        lambda v="tanh": nn.RNN(4, 3, v),
        "nonlinearity",
        [("cube", AE), (3, ATE)],
        "relu",
        fwd(SEQ),
        lstm_seq,
    ),
    "MuFuRu.ops": Case(
        lambda v=None: nn.MuFuRu(4, 3, v),
        "ops",
        [([], AE), ("keep", ATE)],
        FIXED,
        fwd(SEQ),
        lstm_seq,
    ),
    "NormStabilizer.beta": Case(
        lambda v=1.0: nn.NormStabilizer(v),
        "beta",
        [(-1.0, AE)],
        5.0,
        seeded(lambda model: [model.forward(SEQ), model.backward(SEQ, np.ones_like(SEQ))]),
        lstm_seq,
    ),
    "Sequencer.unroll": Case(
        lambda v=None: nn.Sequencer(nn.FastLSTM(4, 3), v),
        "unroll",
        [(1, ATE)],
        Same(True),
        fwd(SEQ),
    ),
    "Sequencer.remember_mode": Case(
        lambda: nn.Sequencer(nn.FastLSTM(4, 3)),
        "remember_mode",
        [("all", AE), (1, ATE)],
        Same("both", computes_the_same=False),
        fwd(SEQ),
        ctor=False,
    ),
    "BiSequencer.unroll": Case(
        lambda v=None: nn.BiSequencer(nn.FastLSTM(4, 3), unroll=v),
        "unroll",
        [("y", ATE)],
        Same(True),
        fwd(SEQ),
    ),
    "Repeater.n_step": Case(lambda v=2: nn.Repeater(nn.FastLSTM(4, 3), v), "n_step", [(0, AE)], 3),
    "Repeater.unroll": Case(
        lambda v=None: nn.Repeater(nn.FastLSTM(4, 3), 2, v), "unroll", [(2, ATE)], Same(True)
    ),
    "SeqLSTM.batch_first": Case(
        lambda v=False: nn.SeqLSTM(4, 3, batch_first=v),
        "batch_first",
        [(0, ATE)],
        True,
        fwd(SEQ),
    ),
    "SeqLSTM.input_size": Case(
        lambda v=4: nn.SeqLSTM(v, 3), "input_size", [(0, AE)], FIXED, fwd(SEQ)
    ),
    "SeqLSTM.output_size": Case(
        lambda v=3: nn.SeqLSTM(4, v), "output_size", [(0, AE)], FIXED, fwd(SEQ)
    ),
    "SeqLSTMP.hidden_size": Case(
        lambda v=5: nn.SeqLSTMP(4, v, 3), "hidden_size", [(0, AE)], FIXED, fwd(SEQ)
    ),
    "SeqBRNN.batch_first": Case(
        lambda v=False: nn.SeqBRNN(4, 3, v), "batch_first", [("t", ATE)], True, fwd(SEQ)
    ),
    "SeqBRNN.input_size": Case(
        lambda v=4: nn.SeqBRNN(v, 3), "input_size", [(0, AE)], FIXED, fwd(SEQ)
    ),
    "SeqBRNN.output_size": Case(
        lambda v=3: nn.SeqBRNN(4, v), "output_size", [(0, AE)], FIXED, fwd(SEQ)
    ),
    "SeqReverseSequence.dim": Case(
        lambda v=0: nn.SeqReverseSequence(v), "dim", [(0.5, ATE)], 1, fwd(SEQ)
    ),
    "MaskZero.n_input_dim": Case(
        lambda v=None: nn.MaskZero(nn.Linear(4, 3), v),
        "n_input_dim",
        [(0, AE)],
        2,
        fwd(np.vstack([X[:2], np.zeros((1, 4))])),
    ),
    "TrimZero.n_input_dim": Case(
        lambda v=1: nn.TrimZero(nn.Linear(4, 3), v),
        "n_input_dim",
        [(-1, AE), (None, ATE)],
        2,
        fwd(np.vstack([X[:2], np.zeros((1, 4))])),
    ),
    "RecurrentAttention.n_step": Case(_ram, "n_step", [(0, AE)], 3, fwd(X[:, :3])),
    "RecurrentAttention.hidden_size": Case(
        lambda v=5: nn.RecurrentAttention(nn.Identity(), nn.Identity(), 2, v),
        "hidden_size",
        [(0, AE), ((5, 0), AE), ("5", ATE)],
        Same((5,)),  # (the rnn's output shape: refused at the next call if it is not)
        lambda model: 0.0,
    ),
    "Recurrence.output_size": Case(
        lambda v=4: nn.Recurrence(nn.Sequential(nn.JoinTable(-1), nn.Linear(8, 4)), v, 1),
        "output_size",
        [(0, AE), ([], AE)],
        FIXED,
        fwd(SEQ),
        lstm_seq,
    ),
    "Recurrence.n_input_dim": Case(
        lambda v=1: nn.Recurrence(nn.Sequential(nn.JoinTable(-1), nn.Linear(8, 4)), 4, v),
        "n_input_dim",
        [(-1, AE), (None, ATE)],
        Same(1),
        fwd(SEQ),
        lstm_seq,
    ),
    "Copy.out_dtype": Case(
        lambda v=None: nn.Copy(v), "out_dtype", [("int32", DTE), ("bogus", DTE)], np.float32
    ),
    "ReinforceNormal.stdev": Case(
        lambda v=0.1: nn.ReinforceNormal(v), "stdev", [(0.0, AE), (NAN, AE)], 2.0
    ),
    "ReinforceNormal.stochastic": Case(
        lambda v=False: nn.ReinforceNormal(0.5, v),
        "stochastic",
        [(1, ATE)],
        True,
        wrap=lambda m: m.evaluate(),
    ),
    "ReinforceNormal.rng": Case(
        lambda v=None: nn.ReinforceNormal(0.5, rng=v),
        "rng",
        [(5, ATE)],
        Fresh(lambda: np.random.default_rng(7)),
    ),
    "NCEModule.k": Case(_nce, "k", [(0, AE)], 3, fwd(NCE_IN)),
    "NCEModule.z": Case(lambda v=1.0: _nce(z=v), "z", [(NAN, AE), ("a", ATE)], 2.0, fwd(NCE_IN)),
    "NCEModule.unigram": Case(
        lambda v=U: _nce(noise=v),
        "unigram",
        [(-U, AE), (U[:2], AE)],
        U[::-1].copy(),
        fwd(NCE_IN),
    ),
    "NCEModule.rng": Case(
        lambda v=None: _nce(rng=v),
        "rng",
        [("r", ATE)],
        Fresh(lambda: np.random.default_rng(1)),
        fwd(NCE_IN),
    ),
    "NCEModule.input_size": Case(
        lambda v=4: nn.NCEModule(v, 5, 2, U), "input_size", [(0, AE)], FIXED, fwd(NCE_IN)
    ),
    "NCEModule.output_size": Case(
        lambda v=5: nn.NCEModule(4, v, 2, U), "output_size", [(0, AE)], FIXED, fwd(NCE_IN)
    ),
    "MSECriterion.size_average": Case(
        lambda v=True: nn.MSECriterion(v), "size_average", [(1, ATE)], False, crit(X, X * 0)
    ),
    "BCECriterion.weights": Case(
        lambda v=None: nn.BCECriterion(v),
        "weights",
        [("ab", ATE), (np.ones((2, 2)), AE)],
        np.array([1.0, 2, 3, 4]),
        crit(np.full((3, 4), 0.3), np.ones((3, 4))),
    ),
    "BCECriterion.size_average": Case(
        lambda v=True: nn.BCECriterion(None, v),
        "size_average",
        [(None, ATE)],
        False,
        crit(np.full((3, 4), 0.3), np.ones((3, 4))),
    ),
    "ClassNLLCriterion.weights": Case(
        lambda v=None: nn.ClassNLLCriterion(v),
        "weights",
        [({"a": 1}, ATE)],
        np.array([1.0, 2, 3, 4]),
        crit(X, IDS),
    ),
    "ClassNLLCriterion.size_average": Case(
        lambda v=True: nn.ClassNLLCriterion(None, v),
        "size_average",
        [(1.0, ATE)],
        False,
        crit(X, IDS),
    ),
    "ClassNLLCriterion.ignore_index": Case(
        lambda v=-100: nn.ClassNLLCriterion(None, True, v),
        "ignore_index",
        [(1.5, ATE), (2**63, AE), (-(2**63) - 1, AE)],
        2,
        crit(X, IDS),
    ),
    "SequencerCriterion.size_average": Case(
        lambda v=False: nn.SequencerCriterion(nn.MSECriterion(), v),
        "size_average",
        [(0, ATE)],
        True,
        crit(SEQ, SEQ * 0),
    ),
    "MaskZeroCriterion.n_input_dim": Case(
        lambda v=None: nn.MaskZeroCriterion(nn.MSECriterion(), v),
        "n_input_dim",
        [(0, AE)],
        Same(1),  # (a (3, 4) input is a batch of rows either way: the value checks shapes)
        crit(np.vstack([X[:2], np.zeros((1, 4))]), X),
    ),
    "NCECriterion.size_average": Case(
        lambda v=True: nn.NCECriterion(v), "size_average", [(1, ATE)], False, crit(PROBS, None)
    ),
    "VRClassReward.scale": Case(
        lambda v=1.0: nn.VRClassReward(nn.Identity(), v),
        "scale",
        [(NAN, AE)],
        2.0,
        crit_grads(SCORES, np.array([1, 0, 2, 0])),
    ),
    "VRClassReward.size_average": Case(
        lambda v=True: nn.VRClassReward(nn.Identity(), 1.0, None, v),
        "size_average",
        [(1, ATE)],
        False,
        crit_grads(SCORES, np.array([1, 0, 2, 0])),
    ),
}
