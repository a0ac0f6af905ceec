"""What the tools/ab_*.py A/B scripts share: one tapernn training step (forward over T and BPTT
through the module API) of a Sequencer on the numba backend, with a hook each call runs first
(the arm's settings: module flags the arms flip between calls)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import tapernn as tn
from tapernn import nn


def training_step(
    x: np.ndarray,
    g: np.ndarray,
    H: int,
    before: Callable[[], None] = lambda: None,
    cell: str = "FastLSTM",
    options: dict | None = None,
) -> tuple[Callable[[], None], nn.Sequencer]:
    """(step, model): `step()` runs `before()`, forward(x), zero_grad_parameters, backward(x, g)
    on a Sequencer(cell(H, H)) of x's dtype, seeded 0, with PlanOptions(**options) if given."""
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(getattr(nn, cell)(H, H)).astype(x.dtype)
    if options:
        seq.set_plan_options(tn.PlanOptions(**options))

    def step() -> None:
        before()
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    return step, seq
