"""Helpers shared by the tests of lending a weight's zeroed `.grad` as scratch
(test_weight_scratch.py, test_pack_scratch.py, test_split_lend.py)."""

import numpy as np

from tapernn.nn.packing import Packing


def seeded(make, seed: int = 0):
    """A module from `make()` with every parameter drawn N(0, 0.1^2) from its own seed."""
    m = make()
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(seed + k).standard_normal(p.shape) * 0.1
    return m


def data(shape: tuple, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(input, output gradient) of `shape`, standard normal from `seed`."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape)


def spy_lend(monkeypatch) -> list:
    """Per forward and backward from now on: the `.grad` arrays Packing lent to a loop's
    panels (the list returned)."""
    record = []
    real = Packing._lend

    def spy(self, entries, args):
        used = real(self, entries, args)
        record.append(used)
        return used

    monkeypatch.setattr(Packing, "_lend", spy)
    return record
