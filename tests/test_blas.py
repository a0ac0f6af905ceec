"""The library's BLAS thread default: compiled programs with small GEMMs run with one thread
(measured 4-8x faster on a busy 2-core machine), big ones and user settings are left alone."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import blas

pools = blas.limiter.pools()


def n_pools() -> int:
    """The BLAS pools this process has now (scipy's OpenBLAS joins numpy's once a numba test
    ran in the process: pytest-xdist workers run files in any order)."""
    return len(blas.limiter.pools())


needs_pool = pytest.mark.skipif(not pools, reason="no BLAS thread pool this process can set")


def same_or_close(one, two, same: bool | None, rtol: float) -> None:
    """Array lists `one` and `two` bit for bit where the BLAS probe (tapernn.blas_bits) says the
    cut in question keeps its bits (`same`), else to `rtol` of each array's largest magnitude:
    tapernn then made the same choices (the caller compares those) and only the BLAS's own
    summation order differs."""
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert a.dtype == b.dtype and a.shape == b.shape
        if same:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(np.abs(a).max(), 1e-30))


def choices(report) -> object:
    """What a compile report says tapernn chose (passes and their node counts, notes, plan,
    loops, kernels, the threads line), its timings and object keys dropped: equal for two
    programs that differ only in the BLAS's bits."""
    import dataclasses

    def strip(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return tuple(
                (f.name, strip(getattr(v, f.name)))
                for f in dataclasses.fields(v)
                if f.name != "milliseconds" and not f.name.endswith("_key")
            )
        if isinstance(v, (list, tuple)):
            return tuple(strip(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((k, strip(x)) for k, x in v.items()))
        return v

    return strip(report)


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
    assert seen == [[1] * n_pools()]  # was the pool's 2
    assert threads_now() == [2] * n_pools()


@needs_pool
def test_big_gemms_explicit_counts_none_and_env_vars(two_threads, monkeypatch):
    big = program(8)
    big.thread_flops = blas.SMALL_GEMM_FLOPS  # as if one 1024x1024 GEMM
    seen = spy(big)
    big(np.ones((8, 8)), np.ones((8, 8)))
    tn.set_blas_threads(None)
    small = program(8)
    seen_small = spy(small)
    small(np.ones((8, 8)), np.ones((8, 8)))
    tn.set_blas_threads("auto")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    small(np.ones((8, 8)), np.ones((8, 8)))
    assert seen == [[2] * n_pools()] and seen_small == [[2] * n_pools()] * 2
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    tn.set_blas_threads(2)
    set_threads(1)
    small(np.ones((8, 8)), np.ones((8, 8)))
    assert seen_small[-1] == [2] * n_pools() and threads_now() == [1] * n_pools()


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


def loop_and_gemm(steps: int, n_big: int, own: str = "off", backend: str = ""):
    """A program with a scan of `steps` small GEMMs (h @ U, (32, 256) @ (256, 256): 4.2 MFLOP
    each) and one top-level (n_big, n_big) @ (n_big, n_big) GEMM. PlanOptions.own_threads
    "off" by default here: on numba with AVX-512 the loop's rows split, and the program then
    owns its calls (BLAS at one thread, the GEMM in halves: the test below)."""
    rng = np.random.default_rng(0)
    h0, xs = rng.standard_normal((32, 256)), rng.standard_normal((steps, 32, 256))
    u, a = rng.standard_normal((256, 256)) * 0.05, rng.standard_normal((n_big, n_big))
    step = tn.trace(lambda h, x, u: [tn.tanh(x + h @ u)] * 2, h0, xs[0], u)

    def f(h0, xs, u, a):
        return [tn.scan(step, [h0], [xs], [u]).ys[0], a @ a]

    options = tn.PlanOptions(own_threads=own, backend=backend)
    return tn.compile(tn.trace(f, h0, xs, u, a), options=options), (h0, xs, u, a)


@needs_pool
def test_a_loop_of_small_gemms_runs_with_one_thread_beside_a_big_gemm(two_threads):
    """A rolled Sequencer at (T*B, H) = (73*32, 256) has time-batched GEMMs over 1 GFLOP and a
    loop of (32, 256) GEMMs: run with the pool's threads, its loop ran 4-15x slower under load.
    A program's small GEMMs (loop bodies counted per step) outweighing a tenth of the big
    ones' flops keep it on one thread; a big GEMM with little else around gets the pool."""
    busy, args = loop_and_gemm(400, 1024)  # 400 x 4.2 MFLOP in the loop vs 2.1 GFLOP
    assert busy.largest_gemm_flops >= blas.SMALL_GEMM_FLOPS
    seen = spy(busy)
    busy(*args)
    assert seen == [[1] * n_pools()]
    lone, args = loop_and_gemm(4, 1024)  # 4 x 4.2 MFLOP vs 2.1 GFLOP: the big GEMM's program
    seen = spy(lone)
    lone(*args)
    assert seen == [[2] * n_pools()]


@needs_pool
def test_an_owned_program_runs_one_blas_thread_and_splits_its_big_gemm(two_threads):
    """The same program with own_threads="auto" (the default): where its loop splits its rows
    (numba, a CPU with a packed kernel), its calls run BLAS at one thread and the big GEMM in
    two halves. On numba whatever the suite's backend (on NumPy's it skipped in every CI run)."""
    from tapernn import own_threads
    from tapernn.backends import numba_available

    owned, args = loop_and_gemm(4, 1024, "auto", "numba" if numba_available() else "")
    if "owned (BLAS" not in owned.report.threads or own_threads.cpus() < 2:
        pytest.skip(f"not owned here: {owned.report.threads!r}")
    seen = spy(owned)
    before = own_threads.SPLIT_GEMMS[0]
    for _ in range(3):  # (the loop splits once its kernels are in place)
        got = owned(*args)
    assert seen == [[1] * n_pools()] * 3 and threads_now() == [2] * n_pools()
    assert own_threads.SPLIT_GEMMS[0] - before == 3
    np.testing.assert_allclose(got[1], args[3] @ args[3], rtol=1e-12, atol=1e-9)
