"""Modules (`from tapernn import nn`): Torch7's nn and Element-Research rnn, 0-based."""
from .attention import RecurrentAttention
from .bidirectional import BiSequencer, BiSequencerLM
from .cells import GRU, LSTM, RNN, FastLSTM, Recurrent
from .containers import ConcatTable, Container, ParallelTable, Sequential
from .criteria import (BCECriterion, ClassNLLCriterion, Criterion, CrossEntropyCriterion,
                       MSECriterion, SequencerCriterion)
from .layers import (CAddTable, CMulTable, Dropout, Identity, Linear, LogSoftMax, LookupTable,
                     ReLU, Reshape, Sigmoid, SoftMax, Tanh)
from .masking import LookupTableMaskZero, MaskZero, MaskZeroCriterion
from .module import Module, Parameter
from .nce import NCECriterion, NCEModule
from .recurrent import AbstractRecurrent, Cell
from .reinforce import ReinforceNormal, VRClassReward
from .repeat import Recursor, Repeater, RepeaterCriterion
from .sequencer import Sequencer
from .tables import JoinTable, NarrowTable, SelectTable, SplitTable

__all__ = [name for name in dir() if not name.startswith("_")]
