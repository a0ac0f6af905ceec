"""Gradients a user adds to a recurrent module's state with `set_grad_hidden_state(t, grad)`:
in a Sequencer's unrolled program they seed the state node of step t (a variant program with
extra seeded outputs); stepped by hand, they join the final-state seed of step t's backward."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError, StateError


def _absolute_step(m: Any, t: int, n_steps: int) -> int:
    if not -n_steps <= t < n_steps:
        m._extra_state_grads.pop(t)  # reported once, not on every later backward
        raise StateError(f"{m.describe()}: set_grad_hidden_state({t}) but {n_steps} steps were "
                         "forwarded")
    return t if t >= 0 else n_steps + t


def _checked(m: Any, k: int, g: Any, like: Any) -> np.ndarray:
    g = np.asarray(g, dtype=like.dtype)
    if g.shape != like.shape:
        raise ShapeError(f"{m.describe()}: set_grad_hidden_state gradient for "
                         f"{m.state_names[k]!r} has shape {g.shape}, the state has {like.shape}")
    return g


def sequence_state_seeds(exe: Any) -> list:
    """(module, t, k, state node, gradient) for each gradient pending on a recurrent module of
    this (unrolled) program."""
    out = []
    for m in [m for m, _ in exe.probe_plan() if getattr(m, "_extra_state_grads", None)]:
        steps = sorted({t for mm, f, t, _, _ in exe.probes if mm is m and f == "outputs"})
        for t, grads in sorted(m._extra_state_grads.items()):
            step = steps[_absolute_step(m, t, len(steps))]
            for k, name in enumerate(m.state_names):
                node = next(nodes[0] for mm, f, tt, _, nodes in exe.probes
                            if mm is m and f == "state:" + name and tt == step)
                out.append((m, t, k, node, _checked(m, k, grads[k], node)))
    return out


def add_stepwise_state_grads(exe: Any, step: int, n_steps: int, seeds: list) -> list:
    """Step-wise use: the backward of record `step` (absolute, of `n_steps` forwarded) adds a
    set_grad_hidden_state(step) gradient to its final-state seeds -- the gradient the backward
    of step + 1 would otherwise be alone in giving."""
    position = {k: pos for pos, k in enumerate(exe.seeded)}  # diff output -> seed
    for m in {m for m, _, _ in exe.finals if getattr(m, "_extra_state_grads", None)}:
        for t in sorted(m._extra_state_grads):
            if _absolute_step(m, t, n_steps) != step:
                continue
            grads = m._extra_state_grads.pop(t)  # applies to one backward
            for j, (mm, k, _) in enumerate(exe.finals):
                pos = position.get(len(exe.real) + j)
                if mm is m and pos is not None:
                    seeds[pos] = seeds[pos] + _checked(m, k, grads[k], seeds[pos])
    return seeds
