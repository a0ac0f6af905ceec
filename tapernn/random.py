"""The library's random generator: `tn.manual_seed(seed)` makes initialisation and dropout
reproducible bit for bit."""

from __future__ import annotations

import numpy as np

from . import validation as check

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator used for parameter initialisation and dropout masks."""
    global _generator
    _generator = np.random.default_rng(check.seed(seed))


def generator(rng: np.random.Generator | None = None) -> np.random.Generator:
    rng = check.generator("tapernn", "rng", rng)
    return rng if rng is not None else _generator
