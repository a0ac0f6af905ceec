"""Modules (`from tapernn import nn`): Torch7's nn and Element-Research rnn, 0-based."""
from .attention import RecurrentAttention
from .bidirectional import BiSequencer, BiSequencerLM
from .cells import GRU, LSTM, RNN, FastLSTM, Recurrent
from .containers import ConcatTable, Container, ParallelTable, Sequential
from .criteria import (
                       BCECriterion,
                       ClassNLLCriterion,
                       Criterion,
                       CrossEntropyCriterion,
                       MSECriterion,
                       SequencerCriterion,
)
from .layers import (
                       CAddTable,
                       CMulTable,
                       Dropout,
                       Identity,
                       Linear,
                       LogSoftMax,
                       LookupTable,
                       ReLU,
                       Reshape,
                       Sigmoid,
                       SoftMax,
                       Tanh,
)
from .layers_extra import (
                       ELU,
                       Abs,
                       Add,
                       CMul,
                       Copy,
                       CopyGrad,
                       Euclidean,
                       ExpandAs,
                       HardTanh,
                       LinearNoBias,
                       Max,
                       Mean,
                       Mul,
                       Narrow,
                       Padding,
                       SAdd,
                       SoftSign,
                       Sum,
                       Transpose,
                       View,
                       ZeroGrad,
)
from .layers_more import (
                       AddConstant,
                       CDivTable,
                       Clamp,
                       CMaxTable,
                       CMinTable,
                       CSubTable,
                       Exp,
                       LeakyReLU,
                       Log,
                       LogSigmoid,
                       MapTable,
                       Min,
                       MulConstant,
                       Power,
                       Replicate,
                       Select,
                       SoftMin,
                       SoftPlus,
                       Sqrt,
                       Square,
                       Squeeze,
                       Unsqueeze,
)
from .masking import LookupTableMaskZero, MaskZero, MaskZeroCriterion
from .module import Module, Parameter
from .mufuru import MuFuRu
from .nce import NCECriterion, NCEModule
from .norm_stabilizer import NormStabilizer
from .recurrence import Recurrence
from .recurrent import AbstractRecurrent, Cell
from .reinforce import ReinforceNormal, VRClassReward
from .repeat import Recursor, Repeater, RepeaterCriterion
from .seq_modules import SeqBRNN, SeqGRU, SeqLSTM, SeqLSTMP, SeqReverseSequence
from .sequencer import Sequencer
from .tables import JoinTable, NarrowTable, SelectTable, SplitTable
from .trimming import TrimZero

__all__ = [name for name in dir() if not name.startswith("_")]
