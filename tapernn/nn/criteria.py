"""Criteria (losses) with torch/nn formulas: MSE, BCE, ClassNLL, CrossEntropy, and
SequencerCriterion (sum over steps). `forward(input, target) -> float`,
`backward(input, target) -> grad_input`."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .. import validation as check
from ..errors import (
    ArgumentError,
    BuildError,
    DTypeError,
    NumericError,
    ShapeError,
    TapernnError,
    ValueRangeError,
    missing_build,
)
from ..tracing import Var
from .module import Module
from .runtime import runtime_of
from .settings import rules
from .tree import flatten


class Criterion(Module):
    """Base class: `build(input, target)` returns the scalar loss symbolically. A criterion has
    its own dtype, as in Torch7 (`criterion:float()`): float64 until `.float()` is called on it;
    a floating-point input array of another dtype is refused (DTypeError), never converted."""

    def forward(self, input: Any, target: Any) -> float:
        self.check_input_dtype(input)
        for a in flatten(input)[0]:  # (every criterion: an empty input has no loss)
            nonempty(self, a)
        self.check_targets(input, target)
        rt = runtime_of(self)
        _, _, record = rt._run((input, target), n_diff_args=1)
        if np.shape(record.outputs[0]) != ():
            raise BuildError(
                f"{self.describe()}.build must return the loss as a scalar (e.g. tn.sum(...)), "
                f"got shape {np.shape(record.outputs[0])}"
            )
        loss = float(record.outputs[0]) + 0.0  # (-0.0, e.g. every row masked: 0.0)
        if not np.isfinite(loss):
            raise NumericError(
                f"{self.describe()}: the loss is {loss} (NaN/Inf); check the "
                f"inputs and the learning rate"
            )
        self.output = loss
        # the values this loss is of: an array changed in place before backward (a reused
        # buffer) is then told from the forward's, which comparing the arrays themselves missed
        self.__dict__["_given"] = [np.array(a) for a in flatten([input, target])[0]]
        return loss

    def backward(self, input: Any, target: Any) -> Any:
        self.check_input_dtype(input)
        given = self.__dict__.pop("_given", None)  # (not held once backward has read it)
        now = [np.asarray(a) for a in flatten([input, target])[0]]
        if (
            given is None
            or len(now) != len(given)
            or not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(now, given))
        ):
            self.forward(input, target)  # Torch7 criteria take input and target again
            self.__dict__.pop("_given", None)
        return runtime_of(self).backward(input, np.ones((), dtype=self.dtype))

    def build(self, input: Any, target: Any) -> Any:
        raise missing_build(self.describe(), "input, target")

    def check_targets(self, input: Any, target: Any) -> None:
        """Validate targets in Python, before any program runs (clear errors); `forward` has
        checked that no input array is empty."""

    def check_input_dtype(self, input: Any) -> None:
        """A float32 model's output into a float64 criterion would compute the loss and its
        gradient in float64 without a word; Torch7 fails there too (its THNN call for a
        FloatTensor input gets the criterion's DoubleTensor buffers)."""
        for a in flatten(input)[0]:
            if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.dtype != self.dtype:
                fix = ".float()" if a.dtype == np.float32 else ".double()"
                raise DTypeError(
                    f"{self.describe()}: the input is {a.dtype.name} but the "
                    f"criterion is {self.dtype.name}; criteria have their own type "
                    f"as in Torch7: convert it with criterion{fix} (or "
                    f".astype(dtype))"
                )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        input = args[0] if args else None
        if (
            len(args) == 2
            and not kwargs
            and (
                isinstance(input, Var)
                or (isinstance(input, list) and input and isinstance(input[0], Var))
            )
        ):
            return self.apply(*args)
        return self.forward(*args, **kwargs)  # (a wrong call: forward's ArgumentTypeError)


def nonempty(criterion: Criterion, a: Any) -> None:
    """An empty input has no loss to average (0 / 0) and, summed, is most likely a bug: Torch7's
    documentation says nothing of it, so every criterion refuses it by name (ShapeError) instead of
    a NaN, a misleading 0 or an IndexError."""
    shape = np.shape(a)
    if 0 in shape:
        raise ShapeError(
            f"{criterion.describe()}: expects at least one element in the input, got shape "
            f"{shape} (an empty batch or sequence has no loss)"
        )


def arrays_only(criterion: Criterion, x: Any, y: Any) -> None:
    """A list where an array goes (a Torch7 table, or data not made an array) says so."""
    for name, v in (("input", x), ("target", y)):
        criterion.expect(
            isinstance(v, Var),
            f"expects the {name} as one array, got a {type(v).__name__} (steps in a list go to "
            f"SequencerCriterion; data: pass np.asarray(...))",
        )


def _masked_total(per_elem: Var, keep: Var | None, size_average: bool) -> Var:
    """Sum (or mean) of `per_elem` over the rows kept by `keep` ((B,) of 0/1; None: all rows)."""
    if keep is None:
        total = F.sum(per_elem)
        return total / float(per_elem.size) if size_average else total
    k = F.reshape(F.greater(keep, 0), (per_elem.shape[0],) + (1,) * (per_elem.ndim - 1))
    total = F.sum(F.where(k, per_elem, 0))  # (a select: a masked row adds exactly 0)
    if not size_average:
        return total
    row = float(per_elem.size // max(per_elem.shape[0], 1))
    return total / F.maximum(F.sum(keep) * row, 1e-30)  # all rows masked: 0, not NaN


class MSECriterion(Criterion):
    """sum((x - y)^2), divided by the number of elements when size_average."""

    setting_rules = rules(size_average=check.flag)

    def __init__(self, size_average: bool = True):
        super().__init__()
        self.size_average = size_average

    def build(self, x: Var, y: Var) -> Var:
        return self.build_masked(x, y, None)

    def build_masked(self, x: Var, y: Var, keep: Var | None) -> Var:
        arrays_only(self, x, y)
        self.expect(x.shape == y.shape, f"input shape {x.shape} and target shape {y.shape} differ")
        d = x - y
        return _masked_total(d * d, keep, self.size_average)


class BCECriterion(Criterion):
    """-sum(w [y log(x + eps) + (1 - y) log(1 - x + eps)]), eps = 1e-12, divided by the number
    of elements when size_average; its input gradient is Torch7's -w (y - x) / ((1 - x + eps)
    (x + eps)) (/ N), 0 where x == y. Inputs must lie in [0, 1] (use a Sigmoid before)."""

    array_settings = ("weights",)  # its program reads them (nn/config_key.py)

    eps = 1e-12

    setting_rules = rules(weights=check.weights, size_average=check.flag)

    def __init__(self, weights: np.ndarray | None = None, size_average: bool = True):
        super().__init__()
        self.weights, self.size_average = weights, size_average

    def check_targets(self, input: Any, target: Any) -> None:
        shape = np.shape(input)
        if self.weights is not None and (not shape or shape[-1] != len(self.weights)):
            raise ShapeError(
                f"{self.describe()}: {len(self.weights)} weights for inputs of shape {shape}; "
                f"expected one weight per element of the last dimension"
            )
        for what, v in (("inputs", input), ("targets", target)):  # (targets: as PyTorch)
            v = np.asarray(v)
            if v.dtype != object and v.size and (v.min() < 0 or v.max() > 1):
                raise ValueRangeError(
                    f"{self.describe()}: {what} must be probabilities in [0, 1], got "
                    f"values in [{v.min():.4g}, {v.max():.4g}]"
                )

    def build(self, x: Var, y: Var) -> Var:
        return self.build_masked(x, y, None)

    def build_masked(self, x: Var, y: Var, keep: Var | None) -> Var:
        arrays_only(self, x, y)
        self.expect(x.shape == y.shape, f"input shape {x.shape} and target shape {y.shape} differ")
        eps = self.eps
        ll = y * F.stop_gradient(F.log(x + eps)) + (1 - y) * F.stop_gradient(F.log(1 - x + eps))
        # d/dx is Torch7's closed form -(y - x) / ((1 - x + eps)(x + eps)), 0 at a perfect
        # prediction (PyTorch's too); autodiff of the logs adds eps (2y - 1) to its numerator
        slope = F.stop_gradient((y - x) / ((1 - x + eps) * (x + eps)))
        ll = ll + (x - F.stop_gradient(x)) * slope
        if self.weights is not None:
            ll = ll * self.weights.astype(x.dtype)
        return -_masked_total(ll, keep, self.size_average)


def _int64(owner: Any, name: str, value: Any) -> int:
    """An integer the program's int64 targets can equal (a larger one raised a bare
    OverflowError at the trace)."""
    value = check.integer(owner, name, value)
    if not -(2**63) <= value < 2**63:
        raise ArgumentError(
            f"{check.who(owner)}: {name} must fit int64 (the targets' type in the program), "
            f"got {value}"
        )
    return value


class ClassNLLCriterion(Criterion):
    """-sum_i w[t_i] x[i, t_i] over rows whose target is not `ignore_index`, divided by
    sum_i w[t_i] when size_average. Targets are 0-based class ids.

    Shapes: input (B, C) log-probabilities with target (B,), or input (C,) with a scalar target.
    """

    array_settings = ("weights",)  # its program reads them (nn/config_key.py)

    setting_rules = rules(weights=check.weights, size_average=check.flag, ignore_index=_int64)

    def __init__(
        self, weights: np.ndarray | None = None, size_average: bool = True, ignore_index: int = -100
    ):
        super().__init__()
        self.weights, self.size_average = weights, size_average
        self.ignore_index = ignore_index

    def check_targets(self, input: Any, target: Any) -> None:
        x, t = np.asarray(input), check.class_ids(self, "targets", np.asarray(target))
        n_class = x.shape[-1] if x.ndim else 0
        if self.weights is not None and len(self.weights) != n_class:
            raise ShapeError(
                f"{self.describe()}: {len(self.weights)} class weights for an input of "
                f"{n_class} classes; expected one weight per class"
            )
        valid = t != self.ignore_index
        bad = t[valid & ((t < 0) | (t >= n_class))]
        if bad.size:
            raise ValueRangeError(
                f"{self.describe()}: class target {bad.ravel()[0]} out of range: "
                f"expected 0 <= target < {n_class} (0-based) or ignore_index "
                f"{self.ignore_index}"
            )
        # (PyTorch gives NaN here, Torch7's THNN 0; its documentation says neither)
        if t.size and not valid.any():
            raise ValueRangeError(
                f"{self.describe()}: expects at least one target that is not ignore_index "
                f"({self.ignore_index}); every target of the batch is ignored (a step that is all "
                f"padding: leave it out of the sequence)"
            )
        w = self.weights
        if self.size_average and w is not None and t.size and w[t[valid]].sum() == 0:
            raise ValueRangeError(
                f"{self.describe()}: the targets' class weights sum to 0: nothing to "
                f"average (size_average); expected at least one target of nonzero weight"
            )

    def build(self, x: Var, t: Var) -> Var:
        return self.build_masked(x, t, None)

    def build_masked(self, x: Var, t: Var, keep: Var | None) -> Var:
        arrays_only(self, x, t)
        self.expect(x.ndim in (1, 2), f"expects input (C,) or (batch, C), got {x.shape}")
        if x.ndim == 1:
            x, t = F.reshape(x, (1, -1)), F.reshape(t, (1,))
        self.expect(
            t.shape == (x.shape[0],), f"target shape {t.shape} does not match input {x.shape}"
        )
        # in int64: in the targets' own dtype ignore_index -100 does not fit a uint8 id, and
        # int8 arithmetic on it wraps (a uint8 corpus's ids; int8 target 28 + 100 = -128)
        t = F.cast(t, np.int64)
        valid = F.where(F.equal(t, self.ignore_index), False, True)
        safe = F.where(valid, t, 0)
        picked = F.reshape(F.gather(x, F.reshape(safe, (-1, 1)), axis=1), (-1,))
        if self.weights is not None:
            w = F.gather(self.weights.astype(x.dtype), safe, axis=0)
        else:
            w = F.ones((x.shape[0],), x.dtype)
        w = F.where(valid, w, 0)
        if keep is not None:
            w = F.where(F.greater(keep, 0), w, 0)
        loss = -F.sum(w * picked)
        if not self.size_average:
            return loss
        # THNN divides by the total weight when it is not 0 (rows all masked: loss 0), whatever
        # its sign: negative class weights are allowed (Torch7, PyTorch)
        total = F.sum(w)
        return loss / F.where(F.greater(F.abs(total), 0), total, 1)


class CrossEntropyCriterion(ClassNLLCriterion):
    """LogSoftMax followed by ClassNLLCriterion (input: unnormalised scores)."""

    def build_masked(self, x: Var, t: Var, keep: Var | None) -> Var:
        return super().build_masked(F.log_softmax(x), t, keep)


class SequencerCriterion(Criterion):
    """Applies `criterion` at every step and sums the losses (divided by T when size_average).

    Input and target: lists of T arrays, or arrays with time on axis 0.  Torch7: nn.SequencerCriterion.
    """

    setting_rules = rules(size_average=check.flag)

    def __init__(self, criterion: Criterion, size_average: bool = False):
        super().__init__()
        self.add_child("0", check.module(self, "criterion", criterion, criterion=True))
        self.size_average = size_average

    @property
    def criterion(self) -> Criterion:
        return self._children["0"]

    def check_targets(self, input: Any, target: Any) -> None:
        xs = _steps(input)
        if not xs:
            raise ShapeError(f"{self.describe()}: expects at least one step, got none")
        for t, (x, y) in enumerate(zip(xs, _steps(target))):
            try:
                self.criterion.check_targets(x, y)
            except TapernnError as e:  # (which of the T steps holds the bad target)
                raise type(e)(f"{e} (step {t} of {len(xs)})") from None

    def build(self, xs: Any, ys: Any) -> Var:
        xs, ys = _steps(xs), _steps(ys)
        self.expect(len(xs) == len(ys), f"{len(xs)} input steps but {len(ys)} target steps")
        from .. import tracing

        losses = []
        for t, (x, y) in enumerate(zip(xs, ys)):
            with tracing.step(t):
                losses.append(self.criterion.apply(x, y))
        total = F.add_n(losses) if len(losses) > 1 else losses[0]
        return total / float(len(losses)) if self.size_average else total

    def describe(self) -> str:
        return f"nn.SequencerCriterion @ {self.criterion.describe()}"


def _steps(seq: Any) -> list:
    if isinstance(seq, (list, tuple)):
        return list(seq)
    if isinstance(seq, Var):
        return [seq[t] for t in range(seq.shape[0])]
    arr = np.asarray(seq)
    return [arr[t] for t in range(arr.shape[0])]


check.NN_CLASSES.update(Criterion=Criterion)  # what validation.module/parameters accept
