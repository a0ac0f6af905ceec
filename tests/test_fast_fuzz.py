"""A few seeded cases of the fast-path fuzzer (tests/fast_fuzz.py; thousands on demand:
tools/fuzz_fast.py): large shapes on the numba backend -- packed step GEMMs, the batch split over
two threads, owned threads, the step loops, bias in the owned GEMM halves, keep.py's reuse --
each call against NumPy equations / the reference interpreter, results held from earlier calls
unchanged; and that those checks fail on a spoiled result or a model masked otherwise than the
oracle (cell.mask_zero() / nn.MaskZero / none)."""

from __future__ import annotations

from dataclasses import replace

import fast_fuzz
import numpy as np
import pytest
from fast_fuzz import Call, FastCase, Layer, make_fast_case, run_case

from tapernn.backends import numba_available

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="the fast paths run on the numba backend"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
]
SEEDS = [2, 4]  # a custom cell split 9|8 with step loops; an RNN split 8|8 in owned calls


@pytest.fixture(autouse=True)
def kernels_now(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")  # kernels from call 1: split from call 2


@pytest.mark.parametrize("seed", SEEDS)
def test_seeded_cases(seed):
    crossed = run_case(make_fast_case(seed))
    assert crossed["split"] > 0, crossed  # (the cases were picked for it: still engaged)


def _fastlstm_case(**kw) -> FastCase:
    calls = [Call(4, None, True, True, False, 0.0), Call(4, None, True, False, False, 0.01)]
    options = {"layout": "batch", "batch_split": "on", "own_threads": "on"}
    return FastCase(0, [Layer("FastLSTM", 3, 128)], 17, np.float64, options, False, calls, **kw)


def test_the_unspoiled_case_passes():
    crossed = run_case(_fastlstm_case())
    assert crossed["split"] == 2 and crossed["owned_gemms"] > 0, crossed


@pytest.mark.parametrize("spoil", ["output", "grad input", "parameter grad", "held output"])
def test_the_checks_fail_on_a_spoiled_result(spoil):
    """One element off by 1e-7 (relative to 1) in the output, the input gradient, a weight's
    gradient, or an earlier call's output changed after it was checked: the case fails."""

    def tamper(k, y, gx, cells, held):
        if k != 1:
            return
        if spoil == "output":
            y[1, 2, 3] += 1e-7
        elif spoil == "grad input":
            gx[0, 16, 2] += 1e-7
        elif spoil == "parameter grad":
            cells[0].i2g.weight.grad[5, 1] += 1e-7
        else:
            held[0][2][0, 0, 0] += 1e-7

    with pytest.raises(AssertionError):
        run_case(_fastlstm_case(), tamper=tamper)


# zero rows in the middle of a row (state reset vs carried), left padding, a row zero at every
# step, every row of the last step; call 2 after a weight change
ZEROS = [(1, 3), (0, 0), (1, 0), (0, 9), (1, 9), (2, 9), (3, 9), (2, 5)] + [
    (3, b) for b in range(0, 17, 2)
]


def _masked_case(how) -> FastCase:
    calls = [
        Call(4, None, True, True, False, 0.0, ZEROS),
        Call(4, None, True, False, False, 0.01, ZEROS),
    ]
    options = {"layout": "batch", "batch_split": "on", "own_threads": "on"}
    return FastCase(0, [Layer("GRU", 3, 128)], 17, np.float64, options, False, calls, [how])


@pytest.mark.parametrize("how", ["cell", "module"])
def test_a_masked_case_passes(how):
    crossed = run_case(_masked_case(how))
    assert crossed["split"] == 2, crossed


@pytest.mark.parametrize("how, built", [("cell", "module"), ("module", "cell"), ("cell", None)])
def test_the_checks_fail_on_other_masking(monkeypatch, how, built):
    """The model masked as `built`, the oracle as `how`: the case fails (the zero rows placed
    make the three semantics differ)."""
    build = fast_fuzz.build
    monkeypatch.setattr(fast_fuzz, "build", lambda case: build(replace(case, masking=[built])))
    with pytest.raises(AssertionError):
        run_case(_masked_case(how))
