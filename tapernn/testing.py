"""Checking gradients: `gradcheck` compares reverse-mode gradients with float64 central
differences of a random projection of the outputs, and names the worst entry when they differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import functional as F
from . import validation as check
from .autodiff import grad
from .errors import ArgumentTypeError, DTypeError, GradcheckError
from .executor import Compiled
from .tracing import _flatten, trace
from .validation import data_array


def gradcheck(
    fn: Callable[..., Any],
    *arrays: Any,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    seed: int = 0,
    max_entries: int = 400,
) -> bool:
    """Check the reverse-mode gradient of `fn` against central differences.

    `fn` takes one Var per array and returns Vars. Floating arrays are checked in float64 (they
    are converted); integer arrays (ids, targets) are passed through and not differentiated. The
    outputs are projected on a fixed random direction r, L = sum_k <out_k, r_k>; each input entry
    (up to `max_entries` per input, chosen at random beyond that) is perturbed by +-eps.
    Returns True, or raises GradcheckError naming the input, the entry, analytic and numeric.
    """
    if not callable(fn):
        raise ArgumentTypeError(
            f"tn.gradcheck takes a function of Vars first, got {type(fn).__name__}"
        )
    eps = check.number("tn.gradcheck", "eps", eps, "positive")
    atol = check.number("tn.gradcheck", "atol", atol, "non-negative")
    rtol = check.number("tn.gradcheck", "rtol", rtol, "non-negative")
    max_entries = check.size("tn.gradcheck", "max_entries", max_entries)
    rng = np.random.default_rng(seed)
    xs = [data_array("tn.gradcheck", np.asarray(a)) for a in arrays]
    xs = [np.array(a, dtype=np.float64) if a.dtype.kind == "f" else a for a in xs]
    if not any(x.dtype.kind == "f" for x in xs):
        raise DTypeError(
            f"tn.gradcheck needs at least one floating-point array to differentiate, "
            f"got {', '.join(x.dtype.name for x in xs) or 'no arrays'} (integer "
            f"arrays are ids or targets: pass x.astype(float) to check x)"
        )
    probe = trace(fn, *xs)
    projections = [rng.standard_normal(o.shape) for o in probe.outputs if o.dtype.kind == "f"]

    def loss(*vs):
        outs = [o for o in _flatten(fn(*vs)) if o.dtype.kind == "f"]
        return F.add_n([F.sum(o * r) for o, r in zip(outs, projections)])

    scalar = trace(loss, *xs)
    wrt = [k for k, x in enumerate(xs) if x.dtype.kind == "f"]
    analytic = Compiled(grad(scalar, wrt=wrt))(*xs)[1:]
    value = Compiled(scalar)
    checks = [(f"input {k} ({scalar.inputs[k].name})", xs[k], g) for k, g in zip(wrt, analytic)]
    worst = _compare(checks, lambda: float(value(*xs)), rng, eps, atol, rtol, max_entries)
    if worst is not None:
        raise GradcheckError(f"gradient mismatch, worst at {worst}")
    return True


def _compare(
    checks: list,
    loss_at: Callable[[], float],
    rng: np.random.Generator,
    eps: float,
    atol: float,
    rtol: float,
    max_entries: int,
) -> str | None:
    """Central differences of `loss_at` for entries of each (name, array, analytic) in `checks`
    (perturbed in place); returns a description of the worst violation, or None."""
    worst: tuple[float, str] | None = None
    for name, data, analytic in checks:
        entries = np.arange(data.size)
        if data.size > max_entries:
            entries = rng.choice(data.size, max_entries, replace=False)
        for e in entries:
            idx = np.unravel_index(e, data.shape) if data.shape else ()
            orig = data[idx]
            data[idx] = orig + eps
            up = loss_at()
            data[idx] = orig - eps
            down = loss_at()
            data[idx] = orig
            numeric = (up - down) / (2 * eps)
            a = float(analytic[idx])
            excess = abs(a - numeric) - (atol + rtol * abs(numeric))
            if excess > 0 and (worst is None or excess > worst[0]):
                where = tuple(int(i) for i in idx)
                worst = (
                    excess,
                    f"{name} entry {where}: analytic {a:.10g} vs numeric {numeric:.10g}",
                )
    return None if worst is None else worst[1]


def gradcheck_module(
    model: Any,
    criterion: Any,
    input: Any,
    target: Any,
    *,
    seed: int = 0,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    max_entries: int = 60,
) -> bool:
    """Check `model.backward` (parameter gradients and float grad_input) against central
    differences of `criterion(model(input), target)`.

    The library generator is reseeded with `seed` before every forward, so dropout masks are the
    same in every evaluation. Up to `max_entries` entries per parameter are checked (at random).
    """
    from .random import manual_seed

    for who, m in (("model", model), ("criterion", criterion)):
        if getattr(m, "dtype", np.float64) != np.float64:  # (tn.gradcheck converts arrays)
            raise DTypeError(
                f"tn.testing.gradcheck_module checks in float64 (central differences of "
                f"eps={eps:g} in {m.dtype} are rounding noise), got a {m.dtype} {who} "
                f"{m.describe()}: check {who}.double() (or a copy.deepcopy of it)"
            )

    def loss_at() -> float:
        manual_seed(seed)
        return float(criterion.forward(model.forward(input), target))

    model.zero_grad_parameters()
    manual_seed(seed)
    out = model.forward(input)
    criterion.forward(out, target)
    grad_input = model.backward(input, criterion.backward(out, target))
    checks = [(name, p.data, p.grad) for name, p in model.named_parameters().items()]
    if isinstance(input, np.ndarray) and input.dtype.kind == "f":
        checks.append(("input", input, grad_input))
    worst = _compare(checks, loss_at, np.random.default_rng(seed), eps, atol, rtol, max_entries)
    if worst is not None:
        raise GradcheckError(f"module gradient mismatch, worst at {worst}")
    return True
