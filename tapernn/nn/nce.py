"""Noise-contrastive estimation (Gutmann & Hyvärinen 2010; Mnih & Teh 2012) for large output
vocabularies, as Torch7's NCEModule / NCECriterion (dpnn, later torch/rnn): in training the
output layer scores the target and k noise samples only; in evaluation it is the full softmax."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .. import library
from .. import random as tn_random
from .. import validation as check
from ..errors import ArgumentError, ShapeError
from ..tracing import Var
from .context import current_build
from .criteria import Criterion
from .module import Module
from .settings import fixed, number, rules, size


class NCEModule(Module):
    """Linear output layer trained by NCE.  Torch7: nn.NCEModule(inputSize, outputSize, k,
    unigrams, Z) with `batchnoise` (k noise samples shared by the batch).

    Training: input `[x, target]` -> `[P_m(target), P_m(samples), P_n(target), P_n(samples)]`
    with P_m(w) = exp(x W_w + b_w) / Z, the k samples drawn from the unigram distribution
    `noise` (normalised here) at every forward, P_n their noise probabilities. `z <= 0` (the
    default, as the original) estimates Z on the first training batch as
    V * mean(exp(scores of the samples)) and keeps it (`self.z`).
    Evaluation: input `[x, target]` or `x` -> exact log-probabilities log_softmax(x Wᵀ + b).

    Shapes: x (B, D), target (B,) 0-based ids -> (B,), (B, k), (B,), (B, k); evaluation (B, V).
    weight (V, D) ~ U(±1/√D), bias (V,) = -log V (so P_m starts near 1/V with Z = 1).
    """

    array_settings = ("unigram",)  # its program reads it (nn/config_key.py)
    call_inputs = ("z",)  # bound at every call (its first call estimates and sets it)
    buffers = ("z",)  # saved by state_dict / tn.save: a loaded model trains on with its Z
    setting_rules = rules(
        input_size=fixed(size()),
        output_size=fixed(size()),
        k=size(),
        unigram=lambda owner, name, noise: _unigram(owner, name, noise),
        z=number(),
        rng=check.generator,
    )

    def __init__(
        self,
        input_size: int,
        output_size: int,
        k: int,
        noise: Any,
        z: float = -1.0,
        rng: np.random.Generator | None = None,
    ):
        super().__init__()
        self.input_size, self.output_size, self.k = input_size, output_size, k
        self.unigram = noise
        self._cdf, self._cdf_of = np.cumsum(self.unigram), self.unigram.copy()
        self.z, self.rng = z, rng
        self.parameter(
            "weight",
            (self.output_size, self.input_size),
            bound=1 / np.sqrt(self.input_size),
            rng=rng,
        )
        self.parameter(
            "bias", (self.output_size,), init=np.full(self.output_size, -np.log(self.output_size))
        )

    def draw_noise(self) -> np.ndarray:
        """k ids from the unigram distribution (with replacement)."""
        u = tn_random.generator(self.rng).random(self.k)
        if not np.array_equal(self.unigram, self._cdf_of):  # changed since: draw from the new
            self._cdf, self._cdf_of = np.cumsum(self.unigram), np.array(self.unigram, copy=True)
        return np.minimum(
            np.searchsorted(self._cdf, u * self._cdf[-1], side="right"), self.output_size - 1
        )

    def build(self, inp: Any) -> Any:
        ctx = current_build()
        x, target = (inp[0], inp[1]) if isinstance(inp, list) and len(inp) == 2 else (inp, None)
        self.expect(
            isinstance(x, Var) and x.ndim == 2 and x.shape[1] == self.input_size,
            f"expects input [x (batch, {self.input_size}), target (batch,)], got "
            f"{getattr(x, 'shape', type(x).__name__)}",
        )
        if not (ctx.training and self.is_training):  # its own mode too (Torch7's self.train)
            return F.log_softmax(x @ self.weight.T + self.bias)
        self.expect(
            isinstance(target, Var) and target.dtype.kind in "iu" and target.shape == (x.shape[0],),
            f"training needs [x, target] with {x.shape[0]} integer target ids, got "
            f"{getattr(target, 'shape', None) if target is not None else 'no target'}",
        )
        ids = ctx.random_input((self.k,), np.dtype(np.int64), self.draw_noise, "noise_ids")
        weight, bias = ctx.bind(self.weight), ctx.bind(self.bias)
        score_t = F.sum(x * F.embedding(weight, target), -1) + F.gather(bias, target, 0)
        score_s = x @ F.embedding(weight, ids).T + F.gather(bias, ids, 0)
        exp_t, exp_s = F.exp(score_t), F.exp(score_s)
        z = _normaliser(self, ctx, exp_s)
        unigram = self.unigram.astype(x.dtype)
        p_noise_s = F.gather(unigram, ids, 0)
        return [
            exp_t / z,
            exp_s / z,
            F.gather(unigram, target, 0),
            F.broadcast_to(p_noise_s, (x.shape[0], self.k)),
        ]

    def _write_fields(self, items: list, mode: str) -> None:
        for name, _, value in items:
            if name == "z":
                self.z = float(value)

    def extra_repr(self) -> str:
        return f"({self.input_size} -> {self.output_size}, k={self.k}, Z={self.z:g})"


def _normaliser(module: NCEModule, ctx: Any, exp_s: Var) -> Var:
    """Z: `module.z` if positive, else estimated as V * mean(exp(sample scores)) by the first
    call of this forward (later calls, e.g. the steps of a Sequencer, reuse it, as Torch7's
    first forward sets Z for the rest); written back to `module.z` after the forward."""
    traced = ctx.per_forward("nce_z", "NCEModule estimates Z once per forward, at its first step")
    if module not in traced:
        given = ctx.random_input(
            (), exp_s.dtype, lambda: np.asarray(module.z, exp_s.dtype), "nce_z"
        )
        estimate = F.stop_gradient(library.mean(exp_s) * float(module.output_size))
        traced[module] = F.where(F.greater(given, 0), given, estimate)
        ctx.probe(module, "z", None, traced[module])
    return traced[module]


def _unigram(module: NCEModule, name: str, noise: Any) -> np.ndarray:
    """The noise distribution `noise` normalised (the constructor's `noise`, kept as `unigram`)."""
    try:
        unigram = np.asarray(noise, dtype=np.float64)
    except (TypeError, ValueError):
        unigram = np.zeros(0)
    V = module.output_size
    if (
        unigram.shape != (V,)
        or not np.all(np.isfinite(unigram))
        or (unigram.min() < 0 or unigram.sum() <= 0)
    ):
        raise ArgumentError(
            f"nn.NCEModule: {name} (the noise distribution) must be {V} non-negative unigram counts or "
            f"probabilities with a positive sum, got {check.got(noise)}"
        )
    return unigram / unigram.sum()


class NCECriterion(Criterion):
    """NCE loss.  Torch7: nn.NCECriterion (eps = 1e-7 as the original).

    Input `[P_m(target) (B,), P_m(samples) (B, k), P_n(target) (B,), P_n(samples) (B, k)]` (an
    NCEModule's training output); the target argument is not used (the module already picked
    the targets). loss = -(sum log(P_mt / (P_mt + k P_nt + eps)) + sum log(k P_ns / (P_ms + k
    P_ns + eps))) / B (not divided when size_average=False). The noise probabilities get no
    gradient. In evaluation the NCEModule outputs log-probabilities: use ClassNLLCriterion.
    """

    eps = 1e-7

    setting_rules = rules(size_average=check.flag)

    def __init__(self, size_average: bool = True):
        super().__init__()
        self.size_average = size_average

    def forward(self, input: Any, target: Any = None) -> float:
        ok = isinstance(input, (list, tuple)) and len(input) == 4
        if not ok:
            raise ShapeError(
                f"{self.describe()}: expects [P_m(target), P_m(samples), "
                f"P_n(target), P_n(samples)] (an NCEModule in training), got "
                f"{np.shape(input) if not isinstance(input, list) else len(input)}"
                f"; in evaluation NCEModule gives log-probabilities: use "
                f"ClassNLLCriterion"
            )
        return super().forward(list(input), np.zeros(0) if target is None else target)

    def backward(self, input: Any, target: Any = None) -> Any:
        return super().backward(list(input), np.zeros(0) if target is None else target)

    def build(self, p: list, target: Any) -> Var:
        pmt, pms, pnt, pns = p
        B = pmt.shape[0]
        self.expect(
            pmt.shape == (B,)
            and pnt.shape == (B,)
            and pms.ndim == 2
            and pms.shape[0] == B
            and pns.shape == pms.shape,
            f"expects shapes (B,), (B, k), (B,), (B, k), got {pmt.shape}, {pms.shape}, "
            f"{pnt.shape}, {pns.shape}",
        )
        k = float(pms.shape[1])
        pnt, pns = F.stop_gradient(pnt), F.stop_gradient(pns)
        from_model = F.log(pmt / (pmt + k * pnt + self.eps))
        from_noise = F.log(k * pns / (pms + k * pns + self.eps))
        loss = -(F.sum(from_model) + F.sum(from_noise))
        return loss / float(B) if self.size_average else loss
