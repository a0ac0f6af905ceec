"""How a traced program's inputs get their values at each call: data leaves, parameter arrays,
fresh random masks (a rolled loop's: nn.step_draws), recurrent states, zero taps (nn.runtime's
Executable.bind)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TapernnError
from .context import BuildContext
from .step_draws import StepDraws, generator_of, scaled_keep


def _binder(node, ctx: BuildContext):
    kind = node.kind
    if kind == "data":  # data inputs are recorded first, in leaf order
        k = next(i for i, n in enumerate(ctx.tape.graph.inputs) if n is node)
        return lambda leaves, k=k: leaves[k]
    if kind == "param":
        p = next(p for p, v in ctx.params.items() if v.node is node)
        return lambda leaves, p=p: p.data
    if kind == "random":
        prob, rng = next((pr, rng) for n, pr, rng in ctx.randoms if n is node)
        if isinstance(prob, StepDraws):  # a loop's (n, ...) input: its site `rng` of the group
            return lambda leaves, group=prob, j=rng: group.take(j)
        if callable(prob):  # BuildContext.random_input: the module draws it
            return lambda leaves, draw=prob: draw()
        shape, dtype = node.shape, node.dtype

        def mask(leaves, prob=prob, rng=rng, shape=shape, dtype=dtype):
            return scaled_keep(generator_of(rng).random(shape), prob, dtype)

        return mask
    if kind == "state":
        m, k = next((m, k) for m, k, n, _ in ctx.state_inputs if n is node)
        return lambda leaves, m=m, k=k: m._initial_state_arrays()[k]
    if kind == "tap":  # a state-gradient variant's zero (its arguments come from args_like)
        return lambda leaves, shape=node.shape, dtype=node.dtype: np.zeros(shape, dtype)
    raise TapernnError(f"input {node.name!r} of kind {kind!r} has no binding")


def _state_signature(m: Any) -> tuple:
    start = m._initial_state_arrays()
    kind = None if start is None else ("remembered" if m._state is not None else "user")
    shapes = None if start is None else tuple(a.shape for a in start)
    return (kind, shapes, m._mask_zero)
