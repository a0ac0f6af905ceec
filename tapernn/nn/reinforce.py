"""REINFORCE (Williams 1992) as in Torch7's dpnn: ReinforceNormal samples an action, and
VRClassReward turns classification hits into a variance-reduced reward for `reinforce(reward)`.

No hand-written backward: ReinforceNormal records log N(sample; mean, stdev) per sample and the
backward seeds it with -reward, so reverse mode over the same graph yields Torch7's gradient
-reward * (sample - mean) / stdev^2 (nn.reinforce_seeds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .. import random as tn_random
from .. import validation as check
from ..errors import ArgumentError, ShapeError, ValueRangeError
from ..tracing import Var
from .context import current_build
from .criteria import Criterion, MSECriterion, nonempty
from .module import Module
from .settings import number, rules


class ReinforceNormal(Module):
    """Samples `mean + stdev * N(0, 1)` in training (the mean in evaluation, unless
    `stochastic`).  Torch7: dpnn's nn.ReinforceNormal(stdev, stochastic).

    The sample is not differentiable: the gradient arriving at the output is dropped, and the
    gradient w.r.t. the mean is REINFORCE's -r (sample - mean) / stdev^2 with r the reward given
    by `reinforce(reward)` (one per sample, or a list with one array per step) before backward.

    Shapes: mean (B, D) -> sample (B, D), reward (B,); or mean (D,) with one scalar reward.
    """

    setting_rules = rules(stdev=number("positive"), stochastic=check.flag, rng=check.generator)

    def __init__(
        self, stdev: float, stochastic: bool = False, rng: np.random.Generator | None = None
    ):
        super().__init__()
        self.stdev, self.stochastic, self.rng = stdev, stochastic, rng
        self.reward: Any = None

    def build(self, mean: Var) -> Var:
        self.expect(
            isinstance(mean, Var) and mean.dtype.kind == "f" and mean.ndim in (1, 2),
            f"expects a float mean of shape (D,) or (batch, D), got "
            f"{getattr(mean, 'shape', type(mean).__name__)}",
        )
        ctx = current_build()
        training = ctx.training and self.is_training  # its own mode too (Torch7's self.train)
        if not (training or self.stochastic):
            # Torch7's gradient -r (output - mean) / stdev^2 is 0 for output = mean
            return F.stop_gradient(mean) if ctx.training else mean
        shape, dtype = mean.shape, mean.dtype
        noise = ctx.random_input(  # (self.rng read at each call: one set later is used)
            shape,
            dtype,
            lambda: tn_random.generator(self.rng).standard_normal(shape).astype(dtype),
            "noise",
        )
        sample = F.stop_gradient(mean + self.stdev * noise)
        if ctx.training:
            d = sample - mean
            log_prob = F.sum(d * d, axis=-1) * (-0.5 / self.stdev**2)
            if ctx.step_mask is not None and mean.ndim == 2:  # lengths=: none past a row's end
                log_prob = log_prob * F.reshape(ctx.step_mask, (mean.shape[0],))
            ctx.add_reinforce(self, log_prob)
        return sample

    def reinforce(self, reward: Any) -> Module:
        if isinstance(reward, (list, tuple)):
            self.reward = [_finite(self, r) for r in reward]
        else:
            self.reward = _finite(self, reward)
        return self

    def extra_repr(self) -> str:
        return f"({self.stdev}{', stochastic' if self.stochastic else ''})"


def _finite(module: Module, reward: Any) -> np.ndarray:
    r = np.asarray(reward, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise ArgumentError(f"{module.describe()}.reinforce: reward must be finite, got {r}")
    return r


class VRClassReward(Criterion):
    """Variance-reduced classification reward for REINFORCE.  Torch7: dpnn's
    nn.VRClassReward(module, scale, criterion).

    Input `[scores, baseline]`, target class ids (0-based). reward = scale * (argmax(scores) ==
    target); the loss is -sum(reward) (divided by the batch size when `size_average`). Backward
    gives `module.reinforce((reward - baseline) / B)` (the REINFORCE modules of the model), a zero
    gradient for the scores, and the gradient of `criterion(baseline, reward)` (MSE by default)
    for the baseline, which so learns the expected reward.

    Shapes: scores (B, C), baseline (B,) or (B, 1), target (B,).
    """

    setting_rules = rules(scale=number(), size_average=check.flag)

    def __init__(
        self,
        module: Module,
        scale: float = 1.0,
        criterion: Criterion | None = None,
        size_average: bool = True,
    ):
        super().__init__()
        module = check.module(self, "module", module)
        object.__setattr__(self, "module", module)  # not a child: the model is not ours
        self.scale, self.size_average = scale, size_average
        criterion = MSECriterion() if criterion is None else criterion
        self.add_child("criterion", check.module(self, "criterion", criterion, criterion=True))
        self.reward: np.ndarray | None = None

    def _unpack(self, input: Any, target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ok = isinstance(input, (list, tuple)) and len(input) == 2
        if not ok:
            raise ShapeError(
                f"{self.describe()}: expects input [scores, baseline], got {type(input).__name__}"
            )
        scores, baseline = np.asarray(input[0]), np.asarray(input[1])
        t = np.asarray(target)
        if scores.ndim != 2:
            raise ShapeError(
                f"{self.describe()}: scores must be (batch, classes), got {scores.shape}"
            )
        nonempty(self, scores)  # (its own forward: Criterion.forward's check does not run)
        B, C = scores.shape
        if baseline.shape not in ((B,), (B, 1)):
            raise ShapeError(
                f"{self.describe()}: baseline must be ({B},) or ({B}, 1), got {baseline.shape}"
            )
        check.class_ids(self, "target", t)
        if t.shape != (B,):
            raise ShapeError(f"{self.describe()}: target must be {B} class ids, got {t.shape}")
        if t.size and (t.min() < 0 or t.max() >= C):
            raise ValueRangeError(
                f"{self.describe()}: class target out of range: expected "
                f"0 <= target < {C} (0-based), got {t.min()}..{t.max()}"
            )
        return scores, baseline, t

    def forward(self, input: Any, target: Any) -> float:
        scores, _, t = self._unpack(input, target)
        self.reward = self.scale * (np.argmax(scores, axis=1) == t).astype(scores.dtype)
        loss = -float(self.reward.sum())
        self.output = loss / len(t) if self.size_average else loss
        return self.output

    def backward(self, input: Any, target: Any) -> list:
        scores, baseline, t = self._unpack(input, target)
        self.forward(input, target)
        vr = self.reward - baseline.reshape(-1)
        if self.size_average:
            vr = vr / len(t)
        self.module.reinforce(vr)
        reward = self.reward.reshape(baseline.shape).astype(baseline.dtype)
        crit = self._children["criterion"]
        crit.forward(baseline, reward)
        self.grad_input = [np.zeros_like(scores), crit.backward(baseline, reward)]
        return self.grad_input

    def extra_repr(self) -> str:
        return f"(scale={self.scale})"
