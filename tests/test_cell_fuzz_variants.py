"""Random cells (tests/cell_fuzz.py) driven the ways users drive them: unroll=True,
need_grad_input=False, lengths=, remembered chunks (with and without lengths=), mask_zero,
BiSequencer, Repeater and a Recursor stepped by hand; outputs against a NumPy evaluation of the
same program, gradients against its central differences, float32 against float64
(tests/cell_fuzz_variants.py). TAPERNN_FUZZ_VARIANT_CASES=N runs N cases (default 12) from seed
TAPERNN_FUZZ_SEED (default 0); `python tools/fuzz_variants.py --cases 1000` runs many."""

from __future__ import annotations

import os
import warnings

import pytest
from cell_fuzz_variants import VARIANTS, applies, check_variant, make_case

CASES = int(os.environ.get("TAPERNN_FUZZ_VARIANT_CASES", "12"))
START = int(os.environ.get("TAPERNN_FUZZ_SEED", "0"))


@pytest.mark.parametrize("seed", range(START, START + CASES))
def test_random_cell_variants(seed):
    case = make_case(seed)
    for variant in VARIANTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                assert check_variant(case, variant) == applies(case, variant)
        except BaseException:
            print(variant, case.describe())
            raise


def test_every_variant_runs_on_the_ci_seeds():
    """Each variant applies to at least one of the CI cases (none is skipped everywhere)."""
    cases = [make_case(seed) for seed in range(START, START + CASES)]
    ran = {v: sum(applies(c, v) for c in cases) for v in VARIANTS}
    assert all(ran.values()), ran
