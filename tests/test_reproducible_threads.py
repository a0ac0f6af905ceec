"""Reproducible training with a fixed layout and thread count (README, "BLAS threads"): with
`PlanOptions(layout="batch")` and `tn.set_blas_threads(n)`, a rolled FastLSTM trained over two
remembered chunks (forward, backward, update each) with 1 and 2 BLAS threads makes the same
choices (compile report) and gives the same bits where the BLAS gives the same bits for 1 and 2
threads (tapernn.blas_bits: the Zen 4 AVX-512 VM's OpenBLAS), else results within rounding (the
Zen 3 AVX2 VM's float32 and float64), on both backends. (The "auto" layout rule times GEMMs per
thread count and may choose another layout, another summation order: not pinned, the bits may
differ; see test_blas_tuning.py for the tuner itself.)"""

from __future__ import annotations

import numpy as np
import pytest
from test_blas import choices, needs_pool, same_or_close, two_threads  # noqa: F401

import tapernn as tn
from tapernn import nn
from tapernn.blas_bits import blas_bits


def train_two_chunks(n_threads: int, dtype) -> tuple[list[np.ndarray], object]:
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((2, 5, 16, 96)).astype(dtype)
    gs = rng.standard_normal((2, 5, 16, 96)).astype(dtype)
    tn.set_blas_threads(n_threads)
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(96, 96)).astype(dtype).remember("both")
    seq.set_plan_options(tn.PlanOptions(layout="batch"))
    out = []
    for x, g in zip(xs, gs):
        out.append(np.array(seq.forward(x), copy=True))
        seq.zero_grad_parameters()
        out.append(np.array(seq.backward(x, g), copy=True))
        out += [p.grad.copy() for p in seq.parameters()]
        seq.update_parameters(0.1)
    assert seq.compile_report().loops, "the Sequencer ran unrolled"  # (a rolled step)
    return out + [p.data.copy() for p in seq.parameters()], choices(seq.compile_report())


@needs_pool
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_rolled_fastlstm_training_run_is_bit_identical_with_1_and_2_threads(
    backend,
    dtype,
    two_threads,  # noqa: F811
):
    (one, chose_one), (two, chose_two) = train_two_chunks(1, dtype), train_two_chunks(2, dtype)
    tn.set_blas_threads("auto")
    assert chose_one == chose_two
    same_or_close(one, two, blas_bits(dtype).threads, 1e-4 if dtype == np.float32 else 1e-12)
