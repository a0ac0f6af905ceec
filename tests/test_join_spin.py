"""The caller's join at an owned split (own_threads.submit / Pending, issue 19, branch h256G; off
by default): with JOIN_SPIN_S > 0 it spins without the GIL (backends/numba_spin.wait) up to
JOIN_SPIN_S for the worker's half, then blocks on the future; at 0 submit hands back the plain
future. The half's value comes back, its exception is raised on the caller, whichever way the
join went (plain future, ended at once, after a spin, or blocked); the spin sees a flag set by
another thread while it spins (its load is not hoisted out of the loop) and gives up after its
rounds; a process without numba's kernel blocks; the split's values are the same bits either
way."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tapernn import own_threads
from tapernn.backends import numba_available

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")


@pytest.fixture
def spin():
    """own_threads.SPIN loaded here (the background worker's job, done on this thread)."""
    if own_threads.SPIN.fn is None:
        own_threads.SPIN.prepare(())
    assert own_threads.SPIN.error is None and own_threads.SPIN.fn is not None
    return own_threads.SPIN


def _half(value, delay=0.0, fail=False):
    if delay:
        time.sleep(delay)
    if fail:
        raise KeyError(value)
    return value


@needs_numba
@pytest.mark.parametrize("seconds", [0.0, 2e-3, 1.0])
@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_value_and_exception_come_back_whichever_way_the_join_went(
    spin, seconds, delay, monkeypatch
):
    monkeypatch.setattr(own_threads, "JOIN_SPIN_S", seconds)
    before = list(own_threads.JOINS)
    p = own_threads.submit(_half, "v", delay)
    assert p.result() == "v"
    q = own_threads.submit(_half, "w", delay, True)
    with pytest.raises(KeyError, match="w"):
        q.result()
    ended, blocked = (a - b for a, b in zip(own_threads.JOINS, before))
    if seconds == 0:  # (off: the plain futures, no Pending)
        assert ended == blocked == 0
        return
    assert ended + blocked == 2
    if delay and seconds < delay:  # (a half longer than the spin: the join blocked)
        assert blocked == 2
    if delay and seconds >= 1.0:  # (spun until the half ended: never blocked)
        assert ended == 2


@needs_numba
def test_spin_sees_a_flag_set_by_another_thread_and_gives_up_after_its_rounds(spin):
    flag = np.zeros(1, np.int64)
    setter = threading.Timer(0.005, lambda: flag.__setitem__(0, 1))
    rounds = int(spin.rate * 5.0)  # (~5 s of rounds: a hoisted load would spin them all)
    t = time.perf_counter()
    setter.start()
    assert spin.fn(flag, rounds)
    assert time.perf_counter() - t < 2.0
    setter.join()
    idle = np.zeros(1, np.int64)
    t = time.perf_counter()
    assert not spin.fn(idle, int(spin.rate * 0.01))
    assert time.perf_counter() - t < 2.0
    assert spin.fn(np.ones(1, np.int64), 0)


def test_without_the_kernel_every_join_blocks(monkeypatch):
    monkeypatch.setattr(own_threads, "JOIN_SPIN_S", 2e-3)
    monkeypatch.setattr(own_threads, "_spinner", lambda: None)
    before = own_threads.JOINS[1]
    p = own_threads.submit(_half, 3, 0.01)
    assert p.result() == 3
    assert own_threads.JOINS[1] - before == 1


@needs_numba
def test_split_gemm_same_bits_spinning_or_blocking(spin, monkeypatch, rng):
    monkeypatch.setattr(own_threads, "MIN_FLOPS", 0.0)
    a = rng.standard_normal((301, 67)).astype(np.float32)
    b = rng.standard_normal((67, 129)).astype(np.float32)
    got = {}
    for seconds in (0.0, 2e-3):
        monkeypatch.setattr(own_threads, "JOIN_SPIN_S", seconds)
        before = list(own_threads.JOINS), own_threads.SPLIT_GEMMS[0]
        got[seconds] = own_threads.run(lambda _: own_threads.matmul(a, b), None)
        assert own_threads.SPLIT_GEMMS[0] == before[1] + 1
        assert sum(own_threads.JOINS) == sum(before[0]) + (seconds > 0)
    np.testing.assert_array_equal(got[0.0], got[2e-3])
    np.testing.assert_allclose(got[0.0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def test_off_by_default_a_split_joins_its_plain_future(monkeypatch, rng):
    assert own_threads.JOIN_SPIN_S == 0.0
    monkeypatch.setattr(own_threads, "MIN_FLOPS", 0.0)
    a, b = rng.standard_normal((30, 20)), rng.standard_normal((20, 10))
    before = list(own_threads.JOINS)
    got = own_threads.run(lambda _: own_threads.matmul(a, b), None)
    np.testing.assert_allclose(got, a @ b, rtol=1e-12)
    assert own_threads.JOINS == before and not isinstance(
        own_threads.submit(_half, 1), own_threads.Pending
    )


def test_a_numpy_only_process_never_imports_numba_for_a_join():
    code = (
        "import sys, numpy as np\n"
        "from tapernn import own_threads\n"
        "own_threads.MIN_FLOPS = 0.0\n"
        "own_threads.JOIN_SPIN_S = 2e-3\n"
        "a = np.ones((40, 30)); b = np.ones((30, 20))\n"
        "r = own_threads.run(lambda _: own_threads.matmul(a, b), None)\n"
        "assert own_threads.SPLIT_GEMMS[0] == 1 and (r == 30).all()\n"
        "assert sum(own_threads.JOINS) == 1, own_threads.JOINS\n"
        "assert 'numba' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
