"""The built-in cells, all written as symbolic `Cell`s: LSTM (Element-Research, peepholes),
FastLSTM (fused gates [i, g, f, o]), GRU (reset before the matmul, or after), RNN, and Torch7's
generic `Recurrent`. Math: ../shared/reference/element-rnn.md §2.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import library
from .. import validation as check
from ..errors import ArgumentTypeError
from ..tracing import Var
from .context import current_build
from .layers import CAddTable, Linear, Sigmoid
from .module import Module
from .recurrent import AbstractRecurrent, Cell
from .settings import choice, fixed, optional, rules, size
from .tree import flatten


class LSTM(Cell):
    """Element-Research LSTM: i and f see c_{t-1} through diagonal peepholes, o sees the new c_t.

        i = σ(W_xi x + b_i + W_hi h + p_i ⊙ c)      f = σ(W_xf x + b_f + W_hf h + p_f ⊙ c)
        g = tanh(W_xg x + b_g + W_hg h)             c' = f ⊙ c + i ⊙ g
        o = σ(W_xo x + b_o + W_ho h + p_o ⊙ c')     h' = o ⊙ tanh(c')

    Shapes: x (D,) or (B, D) -> h (H,) or (B, H); w_x* (H, D), w_h* (H, H), b_*, p_* (H,).
    `peephole=False` drops p_* (then it equals FastLSTM).  Torch7: nn.LSTM(in, out).
    """

    state_names = ("h", "c")
    setting_rules = rules(peephole=fixed(check.flag))

    def __init__(
        self, input_size: int, output_size: int | None = None, peephole: bool = True, rng=None
    ):
        super().__init__(input_size, input_size if output_size is None else output_size)
        D, H = self.input_size, self.hidden_size
        self.peephole = peephole
        for gate in "ifgo":
            self.parameter(f"w_x{gate}", (H, D), bound=1 / np.sqrt(D), rng=rng)
        for gate in "ifgo":
            self.parameter(f"w_h{gate}", (H, H), bound=1 / np.sqrt(H), rng=rng)
        for gate in "ifgo":
            self.parameter(f"b_{gate}", (H,), bound=1 / np.sqrt(D), rng=rng)
        if self.peephole:
            for gate in "ifo":
                self.parameter(f"p_{gate}", (H,), bound=1 / np.sqrt(H), rng=rng)

    def _pre(self, gate: str, x: Var, h: Var) -> Var:
        w_x, w_h, b = (getattr(self, f"{n}{gate}") for n in ("w_x", "w_h", "b_"))
        return x @ w_x.T + b + h @ w_h.T

    def step(self, x, h, c):
        i_pre, f_pre = self._pre("i", x, h), self._pre("f", x, h)
        if self.peephole:
            i_pre, f_pre = i_pre + self.p_i * c, f_pre + self.p_f * c
        i, f, g = F.sigmoid(i_pre), F.sigmoid(f_pre), F.tanh(self._pre("g", x, h))
        c_new = f * c + i * g
        o_pre = self._pre("o", x, h)
        o = F.sigmoid(o_pre + self.p_o * c_new if self.peephole else o_pre)
        return o * F.tanh(c_new), c_new

    def extra_repr(self) -> str:
        return (
            f"({self.input_size} -> {self.hidden_size}{'' if self.peephole else ', no peephole'})"
        )


class FastLSTM(Cell):
    """LSTM without peepholes, one fused input and one fused recurrent projection.

        a = i2g(x) + o2g(h) split into blocks [i, g, f, o];  c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g);
        h' = σ(o) ⊙ tanh(c')

    Shapes: i2g.weight (4H, D), i2g.bias (4H,), o2g.weight (4H, H).  Torch7: nn.FastLSTM.
    """

    repr_children = False  # its Linear children are parts of its equations (nn.printing)

    state_names = ("h", "c")

    def __init__(self, input_size: int, output_size: int, rng=None):
        super().__init__(input_size, output_size)
        self.i2g = Linear(self.input_size, 4 * self.hidden_size, rng=rng)
        self.o2g = Linear(self.hidden_size, 4 * self.hidden_size, bias=False, rng=rng)

    def step(self, x, h, c):
        i, g, f, o = library.split(self.i2g(x) + self.o2g(h), 4, axis=-1)
        c_new = F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
        return F.sigmoid(o) * F.tanh(c_new), c_new


class GRU(Cell):
    """Element-Research GRU (Cho et al.): the reset gate scales h before the recurrent matmul.

        r = σ(W_xr x + b_r + W_hr h)      z = σ(W_xz x + b_z + W_hz h)
        n = tanh(W_xn x + b_n + W_hn (r ⊙ h))            (reset_after: + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    Shapes: w_x* (H, D), w_h* (H, H), b_* (H,) (+ b_hn with reset_after).  Torch7: nn.GRU.
    """

    setting_rules = rules(reset_after=fixed(check.flag))

    def __init__(self, input_size: int, output_size: int, reset_after: bool = False, rng=None):
        super().__init__(input_size, output_size)
        D, H = self.input_size, self.hidden_size
        self.reset_after = reset_after
        for gate in "rzn":
            self.parameter(f"w_x{gate}", (H, D), bound=1 / np.sqrt(D), rng=rng)
        for gate in "rzn":
            self.parameter(f"w_h{gate}", (H, H), bound=1 / np.sqrt(H), rng=rng)
        for gate in "rzn":
            self.parameter(f"b_{gate}", (H,), bound=1 / np.sqrt(D), rng=rng)
        if self.reset_after:
            self.parameter("b_hn", (H,), bound=1 / np.sqrt(H), rng=rng)

    def step(self, x, h):
        r = F.sigmoid(x @ self.w_xr.T + self.b_r + h @ self.w_hr.T)
        z = F.sigmoid(x @ self.w_xz.T + self.b_z + h @ self.w_hz.T)
        if self.reset_after:
            n = F.tanh(x @ self.w_xn.T + self.b_n + r * (h @ self.w_hn.T + self.b_hn))
        else:
            n = F.tanh(x @ self.w_xn.T + self.b_n + (r * h) @ self.w_hn.T)
        return (1 - z) * n + z * h

    def extra_repr(self) -> str:
        return f"({self.input_size} -> {self.hidden_size}{', reset_after' if self.reset_after else ''})"


_NONLINEARITIES = {"tanh": F.tanh, "relu": F.relu, "sigmoid": F.sigmoid}


class RNN(Cell):
    """Elman RNN: h' = f(W_xh x + b_h + W_hh h), f in tanh | relu | sigmoid.

    Shapes: w_xh (H, D), w_hh (H, H), b_h (H,).
    """

    setting_rules = rules(nonlinearity=choice(_NONLINEARITIES))

    def __init__(self, input_size: int, output_size: int, nonlinearity: str = "tanh", rng=None):
        super().__init__(input_size, output_size)
        self.nonlinearity = nonlinearity
        D, H = self.input_size, self.hidden_size
        self.parameter("w_xh", (H, D), bound=1 / np.sqrt(D), rng=rng)
        self.parameter("w_hh", (H, H), bound=1 / np.sqrt(H), rng=rng)
        self.parameter("b_h", (H,), bound=1 / np.sqrt(D), rng=rng)

    def step(self, x, h):
        return _NONLINEARITIES[self.nonlinearity](x @ self.w_xh.T + self.b_h + h @ self.w_hh.T)


class Recurrent(AbstractRecurrent):
    """Torch7's generic Elman recurrence from modules.

    Step 0: h = transfer(input(x) + start) (start: a size -> a learned bias, or a module applied
    to input(x)); later steps: h = transfer(merge([input(x), feedback(h_prev)])).

    The modules may work on tables (ParallelTable, CAddTable ...): then the hidden state h is a
    list of arrays, and `get_hidden_state(t)` returns `(h,)` with h that list.
    """

    table_states = True
    # the learned start's length (None for a start module): its parameter was made for it
    setting_rules = rules(start_size=fixed(optional(size())))

    def __init__(
        self,
        start: int | Module,
        input: Module,
        feedback: Module,
        transfer: Module | None = None,
        merge: Module | None = None,
        rng=None,
    ):
        super().__init__()
        if not isinstance(start, Module):
            self.start_size = check.size(self, "start (a size or a module)", start)
            self.parameter("start", (self.start_size,), bound=1 / np.sqrt(self.start_size), rng=rng)
            self.start_module = None
        else:
            # a plain attribute (not a second child): its parameters are named start.*
            object.__setattr__(self, "start_module", start)
            self.start_size = None
            self.add_child("start", start)
        self.add_child("input", input)
        self.add_child("feedback", feedback)
        self.add_child("transfer", transfer if transfer is not None else Sigmoid())
        self.add_child("merge", merge if merge is not None else CAddTable())

    def __repr__(self) -> str:
        """Torch7-style tree of its modules (a size `start` is its learned bias)."""
        lines = ["nn.Recurrent {"]
        if self.start_module is None:
            lines.append(f"  (start): bias ({self.start_size},)")
        for name, m in self.named_children():
            lines.append(f"  ({name}): " + repr(m).replace("\n", "\n  "))
        return "\n".join(lines + ["}"])

    def mask_zero(self) -> Recurrent:
        raise ArgumentTypeError(
            "nn.Recurrent does not support mask_zero (as in Torch7); use a "
            "Cell such as RNN, LSTM or GRU"
        )

    def build(self, x):
        ctx = current_build()
        first = self not in ctx.states and self._initial_state_arrays() is None
        if not first:
            return super().build(x)
        t = ctx.next_step(self)
        projected = self._children["input"](x)
        started = (
            projected + self._params["start"]
            if self.start_module is None
            else self.start_module(projected)
        )
        h = self._children["transfer"](started)
        leaves, tree = flatten(h)
        self._leaf_tree = (tree,)  # h may be a table (list of arrays): the state's structure
        ctx.set_state(self, tuple(leaves))
        ctx.probe(self, "inputs", t, x)
        ctx.probe(self, "outputs", t, h)
        ctx.probe(self, "state:h", t, h)
        return h

    def state_shapes(self, x: Var) -> list[tuple[int, ...]]:
        # only reached with a state to continue from: step 0 builds the state from the input
        return [tuple(a.shape) for a in self._initial_state_arrays() or ()]

    def step_forward(self, x, state):
        c = self._children
        h = c["transfer"](c["merge"]([c["input"](x), c["feedback"](self._by_name(state)[0])]))
        leaves, tree = flatten(h)
        self.expect(
            tree == self._state_tree()[0],
            "the hidden state changed structure from one "
            "step to the next (a table must stay a table of the same length)",
        )
        return h, tuple(leaves)
