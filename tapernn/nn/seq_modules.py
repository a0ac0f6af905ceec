"""Element-RNN's tensor-in/tensor-out recurrent layers: SeqLSTM, SeqLSTMP, SeqGRU (one
(D+H) x kH weight, x W layout) as Sequencers over an internal symbolic cell, so they compile to
the same program as Sequencer(FastLSTM) / Sequencer(GRU). Math: reference/element-rnn.md §2."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .. import library, tracing
from .. import random as tn_random
from .. import validation as check
from ..errors import ArgumentError, ShapeError
from ..tracing import Var
from .bidirectional import BiSequencer
from .cells import GRU, FastLSTM
from .context import current_build
from .module import Module
from .recurrent import Cell
from .sequencer import Sequencer
from .settings import fixed, rules, size


def _blocks(a: np.ndarray, size: int, order: tuple[int, ...]) -> np.ndarray:
    """The column blocks of `a` (each `size` wide) in `order`."""
    return np.concatenate([a[..., k * size : (k + 1) * size] for k in order], axis=-1)


class _SeqCell(Cell):
    """The step of a Seq* module; reads its owner's parameters (registered on the owner, so
    `named_parameters()` are Torch7's `weight`, `bias`, ...)."""

    def __init__(self, owner: Module, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        object.__setattr__(self, "_owner", owner)  # not a child: the owner contains the cell

    def describe(self) -> str:
        return f"{self._owner.describe()}.step"


class _LSTMStep(_SeqCell):
    state_names = ("h", "c")

    def state_shapes(self, x: Var) -> list[tuple[int, ...]]:
        super().state_shapes(x)
        lead = x.shape[:-1]
        return [lead + (self._owner.output_size,), lead + (self.hidden_size,)]

    def step(self, x, h, c):
        o = self._owner
        w_x, w_h = o._views
        a = x @ w_x + o.bias + h @ w_h
        i, f, og, g = library.split(a, 4, axis=-1)  # blocks [i, f, o, g]
        c_new = F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
        h_new = F.sigmoid(og) * F.tanh(c_new)
        return (h_new @ o.weight_o if o.projected else h_new), c_new


class _GRUStep(_SeqCell):
    def step(self, x, h):
        o, H = self._owner, self.hidden_size
        w_x, w_hru, w_hc = o._views
        gx = x @ w_x + o.bias
        gh = h @ w_hru
        r = F.sigmoid(gx[..., :H] + gh[..., :H])
        u = F.sigmoid(gx[..., H : 2 * H] + gh[..., H:])
        hc = F.tanh(gx[..., 2 * H :] + (r * h) @ w_hc)
        return (1 - u) * hc + u * h


class _SeqBase(Sequencer):
    """A Sequencer over its own step cell, taking (T, B, D) (or (B, T, D) when batch_first)
    and optional initial states before x in a list (Torch7's {h0, x} / {c0, h0, x}); rolled
    unless `unroll` (Sequencer's flag)."""

    _step_class: type = _SeqCell
    n_gates = 4
    projected = False

    setting_rules = rules(
        input_size=fixed(size()),
        output_size=fixed(size()),
        hidden_size=fixed(size()),
        batch_first=check.flag,
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        batch_first: bool,
        mask_zero: bool,
        rng: Any,
        unroll: bool | None,
    ):
        Module.__init__(self)
        self.input_size, self.output_size = input_size, output_size
        self.hidden_size, self.batch_first = hidden_size, batch_first
        mask_zero = check.flag(self, "mask_zero", mask_zero)
        rng = check.generator(self, "rng", rng)
        self._rng = rng  # (what reset() draws from, as construction did)
        self.remember_mode = "neither"
        self._views = None
        self.unroll = unroll
        D, H, R = self.input_size, self.hidden_size, self.output_size
        self.parameter("weight", (D + R, self.n_gates * H), init="zeros")
        self.parameter("bias", (self.n_gates * H,), init="zeros")
        if self.projected:
            self.parameter("weight_o", (H, R), init="zeros")
        self.add_child("0", self._step_class(self, D, H))
        if mask_zero:
            self.module.mask_zero()
        self.reset(rng=rng)

    def _gate_std(self) -> float:
        return 1 / np.sqrt(self.input_size + self.output_size)

    def mask_zero(self) -> _SeqBase:
        """From now on, rows whose x_t is all zeros get zero output and state at that step (as
        the constructor's mask_zero=True).  Torch7: seq:maskZero()."""
        self.module.mask_zero()
        return self

    @property
    def masks_zero(self) -> bool:
        return self.module._mask_zero

    def reset(self, stdv: float | None = None, rng: Any = None) -> _SeqBase:
        """weight ~ N(0, stdv) (default 1/√(D+R); SeqLSTMP 1/√(D+H)), bias 0 except the second
        gate block (forget gate for LSTMs, update gate for GRUs) = 1, as Torch7; drawn from
        `rng`, else the generator the module was built with (else the global one)."""
        rng = check.generator(self, "rng", rng)
        gen = tn_random.generator(rng if rng is not None else self._rng)
        H, R = self.hidden_size, self.output_size
        self.weight.data[...] = gen.normal(0, stdv or self._gate_std(), self.weight.shape)
        self.bias.data[...] = 0
        self.bias.data[H : 2 * H] = 1
        if self.projected:
            self.weight_o.data[...] = gen.normal(0, stdv or 1 / np.sqrt(R + H), (H, R))
        return self

    def forward(self, input: Any, lengths: Any = None) -> Any:
        """Run over a (T, B, D) array (or [h0, x] / [c0, h0, x]); returns (T, B, output)."""
        if lengths is not None:  # (a Sequencer's keyword: refused by name, not a bare TypeError)
            raise ArgumentError(
                f"{self.describe()} takes no lengths=: pad with zero rows and use mask_zero=True "
                f"(Torch7's maskzero), or a Sequencer of the equivalent cell with lengths= "
                f"(to_fast_lstm() / to_gru())"
            )
        return Module.forward(self, input)

    def build(self, x: Any) -> Any:
        n_states = len(self.module.state_names)
        given: list = []
        if isinstance(x, list):
            self.expect(
                1 < len(x) <= n_states + 1 and all(isinstance(v, Var) for v in x),
                f"expects x, or a list of {' or '.join(self._forms())} arrays",
            )
            *given, x = x
        self.expect(
            isinstance(x, Var) and x.ndim == 3 and x.shape[-1] == self.input_size,
            f"expects a 3-d input ({'B, T' if self.batch_first else 'T, B'}, "
            f"{self.input_size}) (batch mode only), got "
            f"{getattr(x, 'shape', type(x).__name__)}",
        )
        if self.batch_first:
            x = F.transpose(x, (1, 0, 2))
        if given:
            self._start_from(x, given[::-1])
        with tracing.step(None):  # the weight's blocks, sliced once for all steps
            self._views = self._blocks()
        try:
            y = super().build(x)
        finally:
            self._views = None  # (symbolic values of this trace only)
        return F.transpose(y, (1, 0, 2)) if self.batch_first else y

    def _blocks(self) -> tuple[Var, ...]:
        """The blocks of `weight` the step multiplies by: input, recurrent."""
        D = self.input_size
        return self.weight[:D], self.weight[D:]

    def _loop_invariants(self) -> list[Var]:
        # the blocks enter a rolled loop as its invariants: the body's gradients for them are
        # per-step products the compiler sums as GEMMs after the loop (x_t W_x's: one GEMM
        # over all steps), as for a Sequencer(FastLSTM)'s weights; the blocks' gradients are
        # joined into weight's once per call, outside the loop
        return list(self._views)

    def _step(self, as_array: bool, masked: bool, clear: bool = True) -> Any:
        call = super()._step(as_array, masked, clear)

        def step(xs: list, invs: list) -> Any:
            outer = self._views
            self._views = tuple(invs) or outer  # (a loop body: its inputs for the blocks)
            try:
                return call(xs, invs)
            finally:
                self._views = outer

        return step

    def _forms(self) -> list[str]:
        names = ["h0", "c0"][: len(self.module.state_names)]
        return ["[" + ", ".join(names[:k][::-1] + ["x"]) + "]" for k in range(1, len(names) + 1)]

    def _start_from(self, x: Var, given: list) -> None:
        """Initial states given as inputs (h0 first, then c0); the others as usual."""
        ctx, cell = current_build(), self.module
        shapes = cell.state_shapes(x[0])
        for name, v, shape in zip(cell.state_names, given, shapes):
            if v.shape != shape:
                raise ShapeError(
                    f"{self.describe()}: initial state {name}0 must have shape "
                    f"{shape}, got {v.shape}"
                )
        state = ctx.state_of(cell, shapes, cell._state_dtype(x))
        ctx.set_state(cell, tuple(given) + tuple(state[len(given) :]))

    def describe(self) -> str:
        return f"nn.{type(self).__name__}{self.extra_repr()}"

    def __repr__(self) -> str:
        return self.describe()

    def extra_repr(self) -> str:
        flags = "".join(
            [", batch_first" if self.batch_first else "", ", mask_zero" if self.masks_zero else ""]
        )
        return f"({self.input_size} -> {self.output_size}{flags})"


class SeqLSTM(_SeqBase):
    """LSTM over a whole (T, B, D) tensor.  Torch7: nn.SeqLSTM(inputsize, outputsize).

        a = x_t W[:D] + h_{t-1} W[D:] + b, blocks [i, f, o, g];  c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙
        tanh(g);  h_t = σ(o) ⊙ tanh(c_t)

    Shapes: (T, B, D) -> (T, B, H) ((B, T, ·) with batch_first); weight (D+H, 4H), bias (4H,);
    init weight N(0, 1/√(D+H)), bias 0 but the forget block 1. Input may also be [h0, x] or
    [c0, h0, x] (h0, c0: (B, H); grad_input mirrors it). `mask_zero`: rows whose x_t is all
    zeros get h_t = c_t = 0. Remembers like a Sequencer (`remember(mode)`, `forget()`);
    `to_fast_lstm()` gives the equivalent FastLSTM. `cell` holds the cell states (T, B, H).
    Program: as a Sequencer's, the step compiled once and run as a loop at every T (the input
    projection x W[:D] one GEMM over all steps); `unroll=True` traces every step instead.
    """

    _step_class = _LSTMStep

    def __init__(
        self,
        input_size: int,
        output_size: int,
        batch_first: bool = False,
        mask_zero: bool = False,
        rng: Any = None,
        unroll: bool | None = None,
    ):
        super().__init__(input_size, output_size, output_size, batch_first, mask_zero, rng, unroll)

    @property
    def cell(self) -> np.ndarray | None:
        cells = self.module.states.get("c") or []
        return np.stack(cells) if cells else None

    def to_fast_lstm(self) -> FastLSTM:
        """A FastLSTM with the same weights (blocks reordered to [i, g, f, o], transposed) and
        the same mask_zero.  Torch7: SeqLSTM:toFastLSTM()."""
        D, H = self.input_size, self.hidden_size
        fast = FastLSTM(D, H).astype(self.dtype)
        W, order = self.weight.data, (0, 3, 1, 2)
        fast.i2g.weight.data[...] = _blocks(W[:D], H, order).T
        fast.i2g.bias.data[...] = _blocks(self.bias.data, H, order)
        fast.o2g.weight.data[...] = _blocks(W[D:], H, order).T
        return fast.mask_zero() if self.masks_zero else fast


class SeqLSTMP(_SeqBase):
    """SeqLSTM with a projection: r_t = h_t W_O is the output and the recurrent input.
    Torch7: nn.SeqLSTMP(inputsize, hiddensize, outputsize).

    Shapes: (T, B, D) -> (T, B, R); weight (D+R, 4H), bias (4H,), weight_o (H, R); init weight
    N(0, 1/√(D+H)), weight_o N(0, 1/√(R+H)), forget-gate bias 1 (Torch7 fills entries R..2R-1,
    a slip when R != H; tapernn fills the forget block H..2H-1). Input x, [r0, x] or
    [c0, r0, x] (r0: (B, R), c0: (B, H)).
    """

    _step_class = _LSTMStep
    projected = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        batch_first: bool = False,
        mask_zero: bool = False,
        rng: Any = None,
        unroll: bool | None = None,
    ):
        super().__init__(input_size, hidden_size, output_size, batch_first, mask_zero, rng, unroll)

    def _gate_std(self) -> float:
        return 1 / np.sqrt(self.input_size + self.hidden_size)  # Torch7: H here, not R

    def extra_repr(self) -> str:
        return f"({self.input_size} -> {self.hidden_size} -> {self.output_size})"


class SeqGRU(_SeqBase):
    """GRU over a whole (T, B, D) tensor.  Torch7: nn.SeqGRU(inputSize, outputSize).

        g = x_t W[:D] + b, blocks [r, u, ĥ];  r = σ(g_r + h W_hr);  u = σ(g_u + h W_hu);
        ĥ = tanh(g_ĥ + (r ⊙ h) W_hĥ);  h_t = (1 − u) ⊙ ĥ + u ⊙ h_{t-1}

    Shapes: (T, B, D) -> (T, B, H); weight (D+H, 3H), bias (3H,); init N(0, 1/√(D+H)), bias 0
    but the update block 1. Input x or [h0, x]. `to_gru()` gives the equivalent GRU.
    """

    _step_class = _GRUStep
    n_gates = 3

    def __init__(
        self,
        input_size: int,
        output_size: int,
        batch_first: bool = False,
        mask_zero: bool = False,
        rng: Any = None,
        unroll: bool | None = None,
    ):
        super().__init__(input_size, output_size, output_size, batch_first, mask_zero, rng, unroll)

    def _blocks(self) -> tuple[Var, ...]:
        """input, recurrent [r, u], recurrent ĥ (applied to r ⊙ h)."""
        D, H = self.input_size, self.hidden_size
        return self.weight[:D], self.weight[D:, : 2 * H], self.weight[D:, 2 * H :]

    def to_gru(self) -> GRU:
        """A GRU (Element-Research form) with the same weights and mask_zero.
        Torch7: SeqGRU:toGRU()."""
        D, H = self.input_size, self.hidden_size
        gru = GRU(D, H).astype(self.dtype)
        W, b = self.weight.data, self.bias.data
        for k, gate in enumerate("rzn"):
            cols = slice(k * H, (k + 1) * H)
            getattr(gru, f"w_x{gate}").data[...] = W[:D, cols].T
            getattr(gru, f"w_h{gate}").data[...] = W[D:, cols].T
            getattr(gru, f"b_{gate}").data[...] = b[cols]
        return gru.mask_zero() if self.masks_zero else gru


class SeqReverseSequence(Module):
    """Reverses an array along `dim` (0-based; the time axis of a (T, B, D) tensor is 0).
    Torch7: nn.SeqReverseSequence(dim) (1-based there, dim <= 3)."""

    setting_rules = rules(dim=check.integer)

    def __init__(self, dim: int = 0):
        super().__init__()
        self.dim = dim

    def build(self, x: Var) -> Var:
        self.expect(
            isinstance(x, Var),
            "expects an array, got a list"
            if isinstance(x, list)
            else f"expects an array, got {type(x).__name__}",
        )
        self.expect(
            -x.ndim <= self.dim < x.ndim,
            f"dimension {self.dim} out of range for input shape {x.shape}",
        )
        d = self.dim % x.ndim
        return x[(slice(None),) * d + (slice(None, None, -1),)]

    def extra_repr(self) -> str:
        return f"({self.dim})"


class SeqBRNN(Module):
    """Bidirectional SeqLSTM: `fwd` over x, `bwd` over x reversed in time (its outputs
    reversed back), y = merge([fwd(x), bwd(x)]) on whole (T, B, H) tensors (default CAddTable:
    the sum).  Torch7: nn.SeqBRNN(inputDim, hiddenDim, batchFirst, merge).

    Shapes: (T, B, D) -> (T, B, H) ((B, T, ·) with batch_first; a JoinTable(-1) merge gives 2H).
    Each forward is a whole sequence (no memory across calls)."""

    setting_rules = rules(
        input_size=fixed(size()), output_size=fixed(size()), batch_first=check.flag
    )

    def __init__(
        self,
        input_size: int,
        output_size: int,
        batch_first: bool = False,
        merge: Module | None = None,
        mask_zero: bool = False,
        rng: Any = None,
    ):
        super().__init__()
        from .layers import CAddTable

        self.input_size, self.output_size = input_size, output_size
        self.batch_first = batch_first
        if merge is not None:
            check.module(self, "merge", merge)
        self.add_child("fwd", SeqLSTM(input_size, output_size, mask_zero=mask_zero, rng=rng))
        self.add_child("bwd", SeqLSTM(input_size, output_size, mask_zero=mask_zero, rng=rng))
        self.add_child("reverse", SeqReverseSequence(0))
        self.add_child("merge", merge if merge is not None else CAddTable())

    remember = BiSequencer.remember  # refused by name (Torch7's SeqBRNN has none either)

    @property
    def forward_module(self) -> SeqLSTM:
        return self._children["fwd"]

    @property
    def backward_module(self) -> SeqLSTM:
        return self._children["bwd"]

    def build(self, x: Var) -> Any:
        self.expect(
            isinstance(x, Var) and x.ndim == 3,
            f"expects a 3-d input, got {getattr(x, 'shape', type(x).__name__)}",
        )
        c = self._children
        if self.batch_first:
            x = F.transpose(x, (1, 0, 2))
        y = c["merge"]([c["fwd"](x), c["reverse"](c["bwd"](c["reverse"](x)))])
        return F.transpose(y, (1, 0, 2)) if self.batch_first else y

    def describe(self) -> str:
        return (
            f"nn.SeqBRNN({self.input_size} -> {self.output_size}"
            f"{', batch_first' if self.batch_first else ''})"
        )
