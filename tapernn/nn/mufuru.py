"""MuFuRu, the multi-function recurrent unit (Weissenborn & Rocktäschel 2016): a GRU-like cell
whose new state mixes composition ops of the old state and a feature by a softmax per unit.
Torch7: nn.MuFuRu(inputSize, outputSize, ops) (rnn)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import library
from .. import validation as check
from ..errors import ArgumentError, ArgumentTypeError
from .layers import Linear
from .recurrent import Cell
from .settings import fixed, rules

# each op maps (old state s, feature v) to a candidate new state
OPERATIONS = {
    "keep": lambda s, v: s,
    "replace": lambda s, v: v,
    "mul": lambda s, v: s * v,
    "diff": lambda s, v: s - v,
    "forget": lambda s, v: F.zeros_like(s),
    "sqrt_diff": lambda s, v: 0.25 * library.sqrt_torch7(F.abs(s - v)),  # (0 gradient at s == v)
    # Torch7: Max(1) / Min(1) over {s, v} stacked, whose tie goes to the first entry, s
    "max": library.maximum_first,
    "min": library.minimum_first,
}
ALL_OPS = ("keep", "replace", "mul", "diff", "forget", "sqrt_diff", "max", "min")


def _op_names(ops: Any) -> tuple[str, ...]:
    """MuFuRu's `ops`: a non-empty list of OPERATIONS' names (op_weights has a block per op)."""
    if not isinstance(ops, (list, tuple)):
        raise ArgumentTypeError(
            f"nn.MuFuRu: ops must be a list of op names from {ALL_OPS}, got {check.got(ops)}"
        )
    if not ops or any(not isinstance(op, str) or op not in OPERATIONS for op in ops):
        raise ArgumentError(
            f"nn.MuFuRu: ops must be a non-empty list from {ALL_OPS}, got {list(ops)}"
        )
    return tuple(ops)


class MuFuRu(Cell):
    """Multi-function recurrent unit, as Element-RNN builds it:

        r = σ(reset_x(x) + reset_h(s))                    reset gate (two Linear, with biases)
        v = σ(feature([x, r ⊙ s]))                         feature (a sigmoid, as the original)
        p = softmax over ops of op_weights([x, s]) viewed (J, H)
        s' = Σ_j p_j ⊙ op_j(s, v)

    ops (default all 8): keep s, replace v, mul s⊙v, diff s−v, forget 0, sqrt_diff
    ¼√|s−v|, max, min; ["keep", "replace"] gives a GRU-like unit.
    Shapes: x (D,) or (B, D) -> s (H,) or (B, H); reset_x (H×D), reset_h (H×H), feature
    (H×(D+H)), op_weights (JH×(D+H)) Linear layers, init U(±1/√fan_in).
    """

    repr_children = False  # its Linear children are parts of its equations (nn.printing)

    setting_rules = rules(ops=fixed(lambda owner, name, ops: _op_names(ops)))

    def __init__(
        self, input_size: int, output_size: int, ops: tuple | list | None = None, rng=None
    ):
        super().__init__(input_size, output_size)
        self.ops = ALL_OPS if ops is None else ops
        rng = check.generator(self, "rng", rng)
        D, H, J = self.input_size, self.hidden_size, len(self.ops)
        self.reset_x = Linear(D, H, rng=rng)
        self.reset_h = Linear(H, H, rng=rng)
        self.feature = Linear(D + H, H, rng=rng)
        self.op_weights = Linear(D + H, J * H, rng=rng)

    def step(self, x, s):
        r = F.sigmoid(self.reset_x(x) + self.reset_h(s))
        v = F.sigmoid(self.feature(F.concat([x, r * s], axis=-1)))
        logits = self.op_weights(F.concat([x, s], axis=-1))
        p = F.softmax(F.reshape(logits, s.shape[:-1] + (len(self.ops), self.hidden_size)), -2)
        out = None
        for j, op in enumerate(self.ops):
            term = p[..., j, :] * OPERATIONS[op](s, v)
            out = term if out is None else out + term
        return out

    def extra_repr(self) -> str:
        return f"({self.input_size} -> {self.hidden_size}) {{ {' '.join(self.ops)} }}"
