"""Simple layers: Linear, LookupTable, transfer functions, Dropout, Identity, Reshape and the
elementwise table reducers CAddTable / CMulTable."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .. import validation as check
from ..errors import DTypeError, ShapeError
from ..tracing import Var
from .context import current_build
from .module import Module
from .settings import fixed, number, rules, size, sizes


def last_dim(module: Module, x: Var, size: int, what: str = "input") -> None:
    module.expect(
        isinstance(x, Var),
        f"expected an array {what}, got a list of {len(x)}"
        if isinstance(x, list)
        else f"expected an array {what}",
    )
    module.expect(
        x.ndim >= 1 and x.shape[-1] == size,
        f"expected {what} size {size} in the last dimension, got shape {x.shape}",
    )


class Linear(Module):
    """y = x Wᵀ + b.  Torch7: nn.Linear(in, out); `bias=False` is LinearNoBias.

    Shapes: x (..., in) -> y (..., out); weight (out, in), bias (out,); init U(±1/√in).
    """

    setting_rules = rules(
        input_size=fixed(size()),
        output_size=fixed(size()),
        has_bias=fixed(check.flag),
    )

    def __init__(self, input_size: int, output_size: int, bias: bool = True, rng=None):
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        bias = check.flag(self, "bias", bias)  # (the argument's name: the field is has_bias)
        bound = 1 / np.sqrt(self.input_size)
        self.parameter("weight", (self.output_size, self.input_size), bound=bound, rng=rng)
        if bias:
            self.parameter("bias", (self.output_size,), bound=bound, rng=rng)
        self.has_bias = bias

    def build(self, x: Var) -> Var:
        last_dim(self, x, self.input_size)
        y = x @ self.weight.T
        return y + self.bias if self.has_bias else y

    def extra_repr(self) -> str:
        return (
            f"({self.input_size} -> {self.output_size}{'' if self.has_bias else ' without bias'})"
        )


class LookupTable(Module):
    """Embedding rows selected by 0-based integer ids.  Torch7: nn.LookupTable (1-based there).

    Shapes: ids (n,) -> (n, n_output); ids (a, b) -> (a, b, n_output); weight (n_index, n_output),
    init N(0, 1).
    """

    setting_rules = rules(n_index=fixed(size()), n_output=fixed(size()))

    def __init__(self, n_index: int, n_output: int, rng=None):
        super().__init__()
        self.n_index, self.n_output = n_index, n_output
        self.parameter("weight", (self.n_index, self.n_output), init="normal", rng=rng)

    def build(self, ids: Var) -> Var:
        self.expect(isinstance(ids, Var), f"expects an array of ids, got {type(ids).__name__}")
        self.expect(
            ids.dtype.kind in "iu",
            f"expects integer ids, got {ids.dtype} (bool and float data arrive as the model's "
            "float dtype: pass the ids as an integer array)",
            DTypeError,
        )
        return F.embedding(self.weight, ids)

    def extra_repr(self) -> str:
        return f"({self.n_index} -> {self.n_output})"


class _Transfer(Module):
    fn = staticmethod(lambda x: x)

    def build(self, x: Any) -> Any:
        self.expect(isinstance(x, Var), "expects an array, got a list (use a Sequencer for tables)")
        return self.fn(x)


class Sigmoid(_Transfer):
    fn = staticmethod(F.sigmoid)


class Tanh(_Transfer):
    fn = staticmethod(F.tanh)


class ReLU(_Transfer):
    fn = staticmethod(F.relu)


class SoftMax(_Transfer):
    """Softmax over the last dimension."""

    fn = staticmethod(F.softmax)


class LogSoftMax(_Transfer):
    """Log-softmax over the last dimension."""

    fn = staticmethod(F.log_softmax)


class Identity(Module):
    def build(self, x: Any) -> Any:
        return x


class Dropout(Module):
    """Zeroes entries with probability p in training, scaling the rest by 1/(1-p); the identity in
    evaluation.  Torch7: nn.Dropout (v2).  A fresh mask per forward (and per step in a Sequencer:
    in a rolled loop each step's mask is a per-step input of the loop, drawn in the order the
    unrolled steps draw them, so a seed gives the same masks either way); backward reuses the
    forward's mask. Masks come from `rng` if given, else from tapernn's global generator
    (`tn.manual_seed`)."""

    setting_rules = rules(p=number("[0, 1)"), rng=check.generator)

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        super().__init__()
        self.p, self.rng = p, rng

    def build(self, x: Var) -> Var:
        ctx = current_build()
        if not (ctx.training and self.is_training) or self.p == 0:  # (its own mode too: Torch7)
            return x
        # (self.rng read at each call: a generator set after the first call is used)
        return x * ctx.random_mask(x.shape, self.p, x.dtype, lambda: self.rng)

    def extra_repr(self) -> str:
        return f"({self.p})"


class Reshape(Module):
    """Reshape to `shape`; an input with more elements keeps its first (batch) dimension."""

    setting_rules = rules(shape=sizes)

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def build(self, x: Var) -> Var:
        size = int(np.prod(self.shape))
        if x.size == size:
            return F.reshape(x, self.shape)
        self.expect(
            x.ndim >= 1 and x.size == x.shape[0] * size,
            f"cannot reshape {x.shape} into {self.shape} (or batch x {self.shape})",
        )
        return F.reshape(x, (x.shape[0],) + self.shape)

    def extra_repr(self) -> str:
        return f"({', '.join(map(str, self.shape))})"


def _same_shapes(module: Module, xs: list) -> None:
    """Torch7's CAddTable / CMulTable add entries of one size: no broadcasting, whose (B, 1)
    and (B,) entries would quietly make a (B, B) sum."""
    shapes = [tuple(getattr(x, "shape", ())) for x in xs]
    module.expect(
        all(s == shapes[0] for s in shapes),
        f"expects entries of one shape (Torch7 does not broadcast them), got {shapes}",
    )


class CAddTable(Module):
    """Sum of a list of same-shaped arrays."""

    def build(self, xs: list) -> Var:
        self.expect(isinstance(xs, list) and len(xs) > 0, "expects a non-empty list", ShapeError)
        _same_shapes(self, xs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class CMulTable(Module):
    """Elementwise product of a list of same-shaped arrays."""

    def build(self, xs: list) -> Var:
        self.expect(isinstance(xs, list) and len(xs) > 0, "expects a non-empty list", ShapeError)
        _same_shapes(self, xs)
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out
