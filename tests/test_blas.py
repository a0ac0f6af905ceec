"""The library's BLAS thread default: compiled programs with small GEMMs run with one thread
(measured 4-8x faster on a busy 2-core machine), big ones and user settings are left alone."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import blas

pools = blas.limiter.pools()
needs_pool = pytest.mark.skipif(not pools, reason="no BLAS thread pool this process can set")


def threads_now() -> list[int]:
    return [get() for _, get in blas.limiter.pools()]


def set_threads(n: int) -> None:
    for set_, _ in blas.limiter.pools():
        set_(n)


def program(n: int):
    graph = tn.trace(lambda a, b: a @ b, np.ones((n, n)), np.ones((n, n)))
    return tn.compile(graph)


def spy(compiled) -> list:
    seen = []
    fn = compiled.program.fn

    def recording(*args):
        seen.append(threads_now())
        return fn(*args)

    compiled.program.fn = recording
    return seen


@pytest.fixture
def two_threads(monkeypatch):
    for var in blas._ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    before = threads_now()
    set_threads(2)
    yield
    tn.set_blas_threads("auto")
    for (set_, _), n in zip(blas.limiter.pools(), before):
        set_(n)


@needs_pool
def test_small_programs_run_with_one_thread_and_restore_the_pool(two_threads):
    small = program(8)
    seen = spy(small)
    small(np.ones((8, 8)), np.ones((8, 8)))
    assert seen == [[1] * len(pools)]  # was the pool's 2
    assert threads_now() == [2] * len(pools)


@needs_pool
def test_big_gemms_explicit_counts_none_and_env_vars(two_threads, monkeypatch):
    big = program(8)
    big.largest_gemm_flops = blas.SMALL_GEMM_FLOPS  # as if 1024x1024
    seen = spy(big)
    big(np.ones((8, 8)), np.ones((8, 8)))
    tn.set_blas_threads(None)
    small = program(8)
    seen_small = spy(small)
    small(np.ones((8, 8)), np.ones((8, 8)))
    tn.set_blas_threads("auto")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    small(np.ones((8, 8)), np.ones((8, 8)))
    assert seen == [[2] * len(pools)] and seen_small == [[2] * len(pools)] * 2
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    tn.set_blas_threads(2)
    set_threads(1)
    small(np.ones((8, 8)), np.ones((8, 8)))
    assert seen_small[-1] == [2] * len(pools) and threads_now() == [1] * len(pools)


def test_module_steps_use_the_default():
    from tapernn import nn

    seq = nn.Sequencer(nn.LSTM(3, 4))
    seq.forward(np.ones((2, 1, 3)))
    assert 0 < seq.compiled.largest_gemm_flops < blas.SMALL_GEMM_FLOPS
    assert blas.program_threads(seq.compiled.largest_gemm_flops) in (1, None)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_set_blas_threads_rejects_bad_counts(bad):
    with pytest.raises(tn.TapernnError, match="positive int, 'auto' or None"):
        tn.set_blas_threads(bad)
