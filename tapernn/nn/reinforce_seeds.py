"""The backward seed of a REINFORCE log-probability: -reward, from the reward a module got
through `reinforce(reward)` (one array for every step, or a list with one array per step)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError, StateError


def reinforce_seed(module: Any, t: int | None, node: Any) -> np.ndarray:
    """-reward for the log-probability `node` that `module` recorded at step `t`: the seed whose
    reverse mode gives the REINFORCE gradient -reward * d log p(sample) / d parameters."""
    reward = getattr(module, "reward", None)
    if reward is None:
        raise StateError(
            f"{module.describe()}: backward needs a reward; call "
            f"model.reinforce(reward) first (a VRClassReward backward does)"
        )
    if isinstance(reward, list):
        step = 0 if t is None else t
        if not 0 <= step < len(reward):
            raise StateError(
                f"{module.describe()}: reward list has {len(reward)} steps, the "
                f"sample of step {step} needs one"
            )
        reward = reward[step]
    reward = np.asarray(reward, dtype=node.dtype)
    if reward.size == 1:  # one reward for the whole batch
        return np.full(node.shape, -reward.item(), dtype=node.dtype)
    if reward.shape != node.shape:
        raise ShapeError(
            f"{module.describe()}{'' if t is None else f' (step {t})'}: reward has "
            f"shape {reward.shape}, expected one per sample {node.shape}"
        )
    return -reward
