"""The fast-path fuzzer's masking (tests/fast_fuzz.py, issue 19): `cell.mask_zero()` (a row
whose step input is all zeros outputs zeros and resets its state) or `nn.MaskZero(cell, 1)`
(its outputs only are zeroed) on any layer of the stack, and the input rows set to zero."""

from __future__ import annotations

import numpy as np

from tapernn import nn


def draw_masking(rng, case, with_lengths: bool = False) -> None:
    """Masks about 40 % of the cases without lengths=: each layer None / "cell" / "module" (at
    least one masked), each call's zero rows drawn (zero_rows). `with_lengths`: the cases with
    lengths= too (off by default, so that a seed's case stays the one it was; the Sequencer
    holds a row's state past its length, and inside it the masking resets / zeroes as alone)."""
    if (not with_lengths and any(c.lengths is not None for c in case.calls)) or rng.random() >= 0.4:
        return
    n = len(case.layers)
    masking = [[None, "cell", "module"][int(rng.integers(3))] for _ in range(n)]
    if not any(masking):
        masking[int(rng.integers(n))] = str(rng.choice(["cell", "module"]))
    case.masking = masking
    for call in case.calls:
        call.zeros = zero_rows(rng, call.T, case.B)


def zero_rows(rng, T: int, B: int) -> list:
    """[(t, b)] input rows to zero: each pattern with some probability (none of them too): rows
    scattered at random, a row zero at every step, left padding (a row's first steps), the
    last step of some rows, every row of one step. (B < 4: one row at least; the draws of B >= 4
    unchanged.)"""
    z = np.zeros((T, B), bool)
    if rng.random() < 0.5:
        z |= rng.random((T, B)) < float(rng.choice([0.05, 0.2, 0.5]))
    if rng.random() < 0.4:
        z[:, int(rng.integers(B))] = True
    if rng.random() < 0.4:
        for b in rng.choice(B, int(rng.integers(1, max(2, B // 2))), replace=False):
            z[: int(rng.integers(1, T)), int(b)] = True
    if rng.random() < 0.3:
        z[T - 1, rng.choice(B, int(rng.integers(1, max(2, B))), replace=False)] = True
    if rng.random() < 0.1:
        z[int(rng.integers(T))] = True
    return [(int(t), int(b)) for t, b in zip(*np.nonzero(z))]


def masked(cells: list, masking: list | None) -> list:
    """The modules of the stack: each cell as masking says (None: the cell itself)."""
    mods = list(cells)
    for k, how in enumerate(masking or []):
        if how == "cell":
            mods[k] = cells[k].mask_zero()
        elif how == "module":
            mods[k] = nn.MaskZero(cells[k], 1)
    return mods
