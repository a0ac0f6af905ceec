"""The random-cell fuzzer's masking (tests/cell_fuzz.py; tools/fuzz_cells.py --masked): each
cell of a case as itself, `cell.mask_zero()` (a row whose input row is all zeros outputs zeros
and resets its states) or `nn.MaskZero(cell, 1)` (its outputs only are zeroed), input rows set
to zero (scattered, left padding, a whole step), and for batched cases the Sequencer's
`lengths=` (padding held past each row's length, filled with garbage the model must not read).
Drawn from a generator of their own after make_case's draws: a seed's unmasked case is
make_case(seed) unchanged."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from cell_fuzz import KINKS, Case, make_case

MASKING = [None, "cell", "module"]


def make_masked_case(seed: int, concat: bool = False, wide: bool = False) -> Case:
    """make_case(seed, concat) with at least one cell masked, zero input rows, and (batched
    cases, half of them) lengths= with NaN / large values in the padding."""
    case = make_case(seed, concat, wide)
    rng = np.random.default_rng([seed, 0x6D61736B])
    n = len(case.cells)
    masking = [MASKING[int(rng.integers(3))] for _ in range(n)]
    if not any(masking):
        masking[int(rng.integers(n))] = str(rng.choice(["cell", "module"]))
    x = case.x.copy()
    rows = x.shape[:-1]  # (T,) or (T, B)
    zero = rng.random(rows) < float(rng.choice([0.1, 0.3, 0.5]))
    if len(rows) == 2 and rng.random() < 0.4:  # left padding of some rows
        for b in range(rows[1]):
            if rng.random() < 0.5:
                zero[: int(rng.integers(1, rows[0] + 1)), b] = True
    if rng.random() < 0.15:
        zero[int(rng.integers(rows[0]))] = True  # a whole step
    x[zero] = 0
    lengths = None
    if case.batch and rng.random() < 0.5:
        lengths = rng.integers(1, case.T + 1, case.batch[0])
        lengths[int(rng.integers(case.batch[0]))] = case.T
        pad = np.arange(case.T)[:, None] >= lengths[None, :]
        x[pad] = rng.choice([np.nan, 1e30, -7.0], (int(pad.sum()), x.shape[-1]))
    kinks = any(op in KINKS for c in case.cells for op, _, _ in c.code)
    fd = case.dtype == np.float64 and not kinks and rng.random() < 0.6
    return replace(case, masking=masking, lengths=lengths, x=x, fd=fd)
