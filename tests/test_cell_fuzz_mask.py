"""The random-cell fuzzer masked (tests/cell_fuzz_mask.py): each cell as itself,
`cell.mask_zero()` or `nn.MaskZero(cell, 1)`, zero input rows, and lengths= with NaN / huge
values in the padding, against the NumPy evaluation masked as Element-RNN masks (a zero input
row: zero output, "cell" also resets the row's states; past a row's length: state held, output
zero). TAPERNN_FUZZ_MASKED_CASES=N runs N (default 40); `python tools/fuzz_cells.py --masked`
runs thousands."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace

import cell_fuzz
import numpy as np
import pytest
from cell_fuzz import check_case, numpy_outputs
from cell_fuzz_mask import make_masked_case

import tapernn as tn

CASES = int(os.environ.get("TAPERNN_FUZZ_MASKED_CASES", "40"))


def _check(case):
    try:
        check_case(case)
    except BaseException:
        print(case.describe(), "\n# masking", case.masking, "lengths", case.lengths)
        raise


@pytest.mark.parametrize("seed", range(CASES))
def test_masked_random_cell(seed):
    _check(make_masked_case(seed))


@pytest.mark.parametrize("seed", [1, 5])
def test_masked_random_cell_on_the_numba_backend(seed):
    from tapernn.backends import numba_available

    if not numba_available():
        pytest.skip("numba is not installed")
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        _check(make_masked_case(seed))
    finally:
        tn.set_backend(before)


def test_an_unmasked_seed_is_the_case_it_was():
    """The masking draws come from a generator of their own: make_case is unchanged."""
    for seed in range(10):
        a, b = cell_fuzz.make_case(seed), make_masked_case(seed)
        assert a.masking is None and a.lengths is None
        assert [c.code for c in a.cells] == [c.code for c in b.cells] and a.T == b.T


def test_the_masked_cases_cover_what_they_promise():
    seen: Counter = Counter()
    for seed in range(CASES):
        case = make_masked_case(seed)
        seen.update(str(m) for m in case.masking)
        seen["lengths"] += case.lengths is not None
        seen["short row"] += case.lengths is not None and int(case.lengths.min()) < case.T
        seen["nan padding"] += bool(np.isnan(case.x).any())
        zero = np.abs(np.nan_to_num(case.x)).max(-1) == 0
        seen["zero rows"] += bool(zero.any())
        seen["unbatched"] += not case.batch
        seen["stacked"] += len(case.cells) > 1
        seen["fd"] += case.fd
        seen["float32"] += case.dtype == np.float32
    for feature in ["cell", "module", "None", "lengths", "short row", "nan padding"]:
        assert seen[feature] >= 3, (feature, seen)
    for feature in ["zero rows", "unbatched", "stacked", "fd", "float32"]:
        assert seen[feature] >= 2, (feature, seen)


def _differs(case, other):
    with np.errstate(all="ignore"):
        a, b = numpy_outputs(case), numpy_outputs(other)
    return not np.allclose(a, b, equal_nan=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (the wrong oracle reads NaN padding)
@pytest.mark.parametrize("wrong", ["cell", "module", None, "no lengths"])
def test_the_checks_fail_when_the_oracle_masks_otherwise(monkeypatch, wrong):
    """The model masked as drawn, the oracle otherwise (another masking of the first cell, or
    lengths= ignored): every case where the two differ fails."""

    def other(case):
        if wrong == "no lengths":
            return replace(case, lengths=None)
        return replace(case, masking=[wrong] + list(case.masking[1:]))

    cases = [make_masked_case(s) for s in range(200)]
    cases = [c for c in cases if c.dtype == np.float64 and _differs(c, other(c))][:4]
    assert len(cases) >= 2
    right = cell_fuzz.numpy_outputs
    monkeypatch.setattr(cell_fuzz, "numpy_outputs", lambda c, *a: right(other(c), *a))
    for case in cases:
        with pytest.raises(AssertionError):
            check_case(case)
