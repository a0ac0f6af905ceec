"""Bit-for-bit reproducible training with a fixed layout and thread count (README, "BLAS
threads"): with `PlanOptions(layout="batch")` and `tn.set_blas_threads(n)`, a rolled FastLSTM
trained over two remembered chunks (forward, backward, update each) gives the same bits with
1 and 2 BLAS threads, on both backends, in float32 and float64. (The "auto" layout rule times
GEMMs per thread count and may choose another layout, another summation order: not pinned,
the bits may differ; see test_blas_tuning.py for the tuner itself.)"""

from __future__ import annotations

import numpy as np
import pytest
from test_blas import needs_pool, two_threads  # noqa: F401

import tapernn as tn
from tapernn import nn


def train_two_chunks(n_threads: int, dtype) -> list[np.ndarray]:
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
    return out + [p.data.copy() for p in seq.parameters()]


@needs_pool
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_rolled_fastlstm_training_run_is_bit_identical_with_1_and_2_threads(
    backend,
    dtype,
    two_threads,  # noqa: F811
):
    one, two = train_two_chunks(1, dtype), train_two_chunks(2, dtype)
    tn.set_blas_threads("auto")
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert a.dtype == b.dtype and np.array_equal(a, b)
