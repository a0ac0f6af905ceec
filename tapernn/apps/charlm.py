"""The character language model behind `tapernn train`: LookupTable -> Sequencer(stack of cells)
(or a stack of SeqLSTM / SeqGRU tensor modules) -> Sequencer(Linear) giving (T, B, V) logits; its training step, validation perplexity, unigram
baseline, sampling, and the remembered state that truncated BPTT carries across batches."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from .. import nn, optim
from ..errors import ArgumentError, no_cell_step
from .command_line import import_attribute

BUILTIN_CELLS = {
    "lstm": nn.LSTM,
    "fastlstm": nn.FastLSTM,
    "gru": nn.GRU,
    "rnn": nn.RNN,
    "seqlstm": nn.SeqLSTM,
    "seqgru": nn.SeqGRU,
}


class CellSpecError(ArgumentError):
    """A --cell value that names no usable cell class (one-line message)."""


def resolve_cell(spec: str) -> type:
    """`lstm`, `fastlstm`, `gru`, `rnn`, `seqlstm`, `seqgru`, or `module:Class` naming an
    importable nn.Cell subclass."""
    builtin = BUILTIN_CELLS.get(spec.lower())
    if builtin is not None:
        return builtin
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise CellSpecError(
            f"unknown cell {spec!r}: use lstm, fastlstm, gru, rnn, seqlstm, seqgru or module:Class"
        )
    cls = import_attribute(spec, "--cell", CellSpecError)
    if not (isinstance(cls, type) and issubclass(cls, nn.AbstractRecurrent)):
        raise CellSpecError(f"--cell {spec}: {class_name} is not a tapernn nn.Cell subclass")
    _check_layer_class(spec, cls)
    return cls


def _check_layer_class(spec: str, cls: type) -> None:
    """Refuses, with the options (before the corpus is read or a model built), a recurrent
    class that cannot be a layer: a Cell without `step`, the abstract base, a constructor
    that does not take (input_size, hidden_size)."""
    name = "nn.Cell" if cls is nn.Cell else cls.__name__
    if issubclass(cls, nn.Cell) and cls._cell_step is no_cell_step:
        raise CellSpecError(
            f"--cell {spec}: {name} does not define step(self, x, *state) (a Cell subclass "
            f"returns its new state(s) from the input and the old state(s))"
        )
    if cls.step_forward is nn.AbstractRecurrent.step_forward:
        raise CellSpecError(
            f"--cell {spec}: {name} is abstract (no step_forward): name an nn.Cell subclass "
            f"that defines step(self, x, *state)"
        )
    try:
        inspect.signature(cls).bind(1, 1)
    except TypeError as e:
        raise CellSpecError(
            f"--cell {spec}: {name}(input_size, hidden_size) cannot be called ({e}); a layer "
            f"of the language model is built as cell(input_size, hidden_size)"
        ) from None
    except ValueError:  # no signature to read: the build says
        pass


class SeqStack(nn.Sequential):
    """Stacked tensor recurrent modules (SeqLSTM, SeqGRU: (T, B, D) in and out) that remember
    together, standing where a Sequencer of cells would."""

    remember_mode = "neither"

    def remember(self, mode: str = "both") -> SeqStack:
        for m in self.children():
            if isinstance(m, nn.Sequencer):
                m.remember(mode)
        self.remember_mode = mode
        return self


class CharLM:
    """Embedding, `layers` recurrent cells (Dropout after each when dropout > 0), linear decoder.

    Shapes: ids (T, B) int -> logits (T, B, V). Loss: mean per-token NLL
    (SequencerCriterion(CrossEntropyCriterion(), size_average=True)).
    """

    def __init__(
        self,
        vocab_size: int,
        cell: type,
        layers: int,
        embed: int,
        hidden: int,
        dropout: float = 0.0,
        remember: bool = True,
        dtype: str = "float64",
    ):
        if not (isinstance(cell, type) and issubclass(cell, nn.Module)):
            raise CellSpecError(
                f"CharLM: cell must be a tapernn module class taking (input_size, hidden_size) "
                f"(nn.FastLSTM, nn.GRU, a Cell subclass; resolve_cell('lstm') for a name), got "
                f"{cell!r}"
            )
        if not (isinstance(layers, int) and layers >= 1):
            raise ArgumentError(f"CharLM: layers must be an integer >= 1, got {layers!r}")
        tensor_modules = issubclass(cell, nn.Sequencer)  # SeqLSTM, SeqGRU: no Sequencer around
        stack = SeqStack() if tensor_modules else nn.Sequential()
        for layer in range(layers):
            try:
                stack.add(cell(embed if layer == 0 else hidden, hidden))
            except TypeError as e:
                raise CellSpecError(
                    f"{cell.__name__}(input_size, hidden_size) failed: {e}"
                ) from None
            if dropout > 0:  # Zaremba et al.: dropout on the non-recurrent connections only
                stack.add(nn.Dropout(dropout))
        self.recurrent = stack if tensor_modules else nn.Sequencer(stack)
        self.recurrent.remember("both" if remember else "neither")
        self.model = nn.Sequential(
            nn.LookupTable(vocab_size, embed),
            self.recurrent,
            nn.Sequencer(nn.Linear(hidden, vocab_size)),
        )
        self.criterion = nn.SequencerCriterion(nn.CrossEntropyCriterion(), size_average=True)
        self.model.astype(dtype)
        self.criterion.astype(dtype)
        self.vocab_size = vocab_size

    nce: nn.NCEModule | None = None  # set by use_nce

    def use_nce(self, k: int, unigram: np.ndarray, z: float = 1.0) -> CharLM:
        """Train the decoder by noise-contrastive estimation (`tapernn train --loss nce`): an
        NCEModule with k noise samples from `unigram` replaces the Linear decoder, NCECriterion
        the cross-entropy; evaluation and sampling use its exact full softmax. Z is fixed
        (default 1: the bias starts at -log V) so a resumed run continues exactly."""
        hidden = self.model.get(2).module.input_size
        dtype = self.model.dtype
        self.nce = nn.NCEModule(hidden, self.vocab_size, k, unigram, z=z)
        body = nn.Sequential(self.model.get(0), self.recurrent)
        self.model = nn.Sequential(nn.ParallelTable(body, nn.Identity()), TokenRows(self.nce))
        self.criterion = nn.NCECriterion()
        self.eval_criterion = nn.SequencerCriterion(nn.ClassNLLCriterion(), size_average=True)
        for m in (self.model, self.criterion, self.eval_criterion):
            m.astype(dtype)
        return self

    def _input(self, ids: np.ndarray, targets: np.ndarray | None = None):
        """The model's input: the ids, or with NCE [ids, targets] (any targets in evaluation)."""
        if self.nce is None:
            return ids
        return [ids, np.zeros(np.shape(ids), np.int64) if targets is None else targets]

    def parameters(self) -> list[nn.Parameter]:
        return self.model.parameters()

    def n_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def train_step(
        self, inputs: np.ndarray, targets: np.ndarray, optimizer: optim.Optimizer, clip: float
    ) -> float:
        """One truncated-BPTT update on a (T, B) chunk; returns the mean NLL before the update."""
        self.model.zero_grad_parameters()
        x = self._input(inputs, targets)
        logits = self.model.forward(x)
        loss = self.criterion.forward(logits, targets)
        # the data input needs no gradient: the backward program without the dX work
        self.model.backward(x, self.criterion.backward(logits, targets), need_grad_input=False)
        if clip > 0:
            optim.clip_grad_norm(self.parameters(), clip)
        optimizer.step()
        return float(loss)

    def mean_nll(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> float:
        """Mean per-token NLL over (n, T, B) chunks in evaluation mode (state carried across
        chunks when remembering). Leaves the model in training mode with its state forgotten."""
        self.model.evaluate()
        criterion = getattr(self, "eval_criterion", self.criterion)
        total, n = 0.0, 0
        try:
            for x, y in zip(inputs, targets):
                if should_stop():
                    break
                total += float(criterion.forward(self.model.forward(self._input(x, y)), y))
                n += 1
        finally:
            self.model.training()
        return total / max(n, 1)

    def sample(
        self, prime: list[int], length: int, temperature: float, rng: np.random.Generator
    ) -> list[int]:
        """Feed `prime` one id at a time, then draw `length` ids from softmax(logits / T).

        <unk> (id 0) is never drawn. Uses `rng` only, so sampling never shifts the training
        random stream (a run is reproducible whatever --sample-len is)."""
        mode = self.recurrent.remember_mode
        self.model.evaluate()
        self.recurrent.remember("both")  # one (1, 1) step per call; the state must carry over
        self.model.forget()
        try:
            out: list[int] = []
            logits = None
            for k in prime:
                logits = self.model.forward(self._input(np.array([[k]])))
            for _ in range(length):
                k = _draw(logits[0, 0], temperature, rng)
                out.append(k)
                logits = self.model.forward(self._input(np.array([[k]])))
            return out
        finally:
            self.recurrent.remember(mode)
            self.model.training()
            self.model.forget()

    # ---- remembered state (truncated BPTT carries it from one batch to the next) ----------------

    def cells(self) -> list[nn.AbstractRecurrent]:
        return [m for m in self.recurrent.modules() if isinstance(m, nn.AbstractRecurrent)]

    def remembered_states(self) -> list[tuple[np.ndarray, ...] | None]:
        return [c._initial_state_arrays() for c in self.cells()]

    def restore_states(self, states: list[tuple[np.ndarray, ...] | None]) -> None:
        for cell, state in zip(self.cells(), states):
            if state is None:
                cell.forget()
            else:
                cell._store_state(tuple(state))  # the runtime's own hook for a step's final state


class TokenRows(nn.Module):
    """[(T, B, H) hidden states, (T, B) targets] -> `module([h as (T*B, H), targets as (T*B,)])`:
    an NCEModule over every token of the chunk (one set of k noise samples per chunk). Its
    evaluation output (T*B, V) log-probabilities comes back as (T, B, V)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.add_child("0", module)

    def build(self, xs: list):
        from .. import functional as F

        h, y = xs
        T, B = y.shape
        out = self._children["0"]([F.reshape(h, (T * B, h.shape[-1])), F.reshape(y, (T * B,))])
        return F.reshape(out, (T, B, out.shape[-1])) if not isinstance(out, list) else out


def _draw(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z[0] = -np.inf  # <unk>
    p = np.exp(z - z.max())
    cdf = np.cumsum(p)
    return int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))


def unigram_nll(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int) -> float:
    """Mean NLL of `eval_ids` under add-one-smoothed character frequencies of `train_ids`: the
    baseline a model that ignores context reaches."""
    counts = np.bincount(np.ravel(train_ids), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(-log_p[np.ravel(eval_ids)].mean())
