"""The caller's serial memory passes shared with the worker (own_threads.in_two, issue 19, branch
h512b): each job runs once, on the caller or the worker, only where two threads are allowed
(inside an owned call, or with `owned=False` where own_threads.allowed says so); an error of
either side is raised after both ended. zero_fill zeroes every array whatever its layout."""

import threading

import numpy as np
import pytest

import tapernn as tn
from tapernn import own_threads


@pytest.fixture
def two(monkeypatch):
    """in_two from any size, on a machine of two CPUs at least (own_threads.allowed)."""
    monkeypatch.setattr(own_threads, "TWO_MIN_BYTES", 0)
    monkeypatch.setattr(own_threads, "cpus", lambda: 2)
    yield
    tn.set_blas_threads("auto")


def _jobs(n, seen):
    def job(k):
        seen.append((k, threading.get_ident()))

    return [(lambda k=k: job(k), 100 + k) for k in range(n)]


def test_in_two_runs_each_job_once_on_both_threads_where_allowed(two):
    me = threading.get_ident()
    for owned, inside, both in ((True, True, True), (True, False, False), (False, False, True)):
        seen = []
        if inside:
            own_threads.run(
                lambda _, seen=seen, owned=owned: own_threads.in_two(_jobs(7, seen), owned), None
            )
        else:
            own_threads.in_two(_jobs(7, seen), owned)
        assert sorted(k for k, _ in seen) == list(range(7)), (owned, inside)
        threads = {t for _, t in seen}
        assert threads == ({me} | own_threads.worker_ident if both else {me}), (owned, inside)
    seen = []
    tn.set_blas_threads(1)  # (not allowed: the caller alone, also outside owned calls)
    own_threads.in_two(_jobs(5, seen), owned=False)
    assert {t for _, t in seen} == {me} and len(seen) == 5


def test_in_two_below_its_bytes_runs_on_the_caller(two, monkeypatch):
    monkeypatch.setattr(own_threads, "TWO_MIN_BYTES", 10_000)
    seen = []
    own_threads.in_two(_jobs(7, seen), owned=False)  # (7 jobs of ~100 bytes)
    assert {t for _, t in seen} == {threading.get_ident()} and len(seen) == 7


@pytest.mark.parametrize("side", [0, 1])
def test_in_two_raises_either_sides_error_after_both_ended(two, side):
    ended = []

    def bad():
        raise ValueError("boom")

    def slow():
        threading.Event().wait(0.05)
        ended.append(1)

    # (largest first, to the lighter side: job 0 on the caller, job 1 on the worker)
    jobs = [(bad, 10), (slow, 5)] if side == 0 else [(slow, 10), (bad, 5)]
    with pytest.raises(ValueError, match="boom"):
        own_threads.in_two(jobs, owned=False)
    assert ended == [1]


def test_zero_fill_zeroes_every_layout_on_both_threads(two, rng):
    arrays = [
        rng.standard_normal((37, 41)),
        rng.standard_normal((64, 33)).astype(np.float32)[:, ::2],  # (strided: whole, one job)
        rng.standard_normal((5, 6, 7)).T,  # (F order)
        rng.standard_normal(1),
        np.ones((0, 3)),
        rng.standard_normal(1001).astype(np.float32),
    ]
    before = own_threads.TWO_CALLS[0]
    own_threads.run(lambda _: own_threads.zero_fill(arrays), None)
    assert own_threads.TWO_CALLS[0] == before + 1
    for a in arrays:
        assert not a.any() and a.dtype in (np.float32, np.float64)
    arrays[0][...] = 1  # outside an owned call: the caller alone, zeros too
    own_threads.zero_fill(arrays)
    assert not arrays[0].any() and own_threads.TWO_CALLS[0] == before + 1
