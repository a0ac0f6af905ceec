"""While the background compile worker has jobs, the interpreter's switch interval is at most
background.WORKER_SWITCH_S (the caller waits less for the GIL the worker took); it is the
caller's again once the queue is empty -- unless someone set another meanwhile."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from tapernn.backends import background


class Fake:
    """A kernel handle whose compile reads the switch interval, and may wait for a go."""

    error = None

    def __init__(self, go: threading.Event | None = None) -> None:
        self.go, self.seen = go, []

    def prepare(self, key) -> None:
        self.seen.append(sys.getswitchinterval())
        if self.go is not None:
            assert self.go.wait(60)

    def has(self, key) -> bool:
        return True


@pytest.fixture
def interval():
    background.wait(60)  # (earlier tests' jobs done)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def drained() -> None:
    """Until the worker has restored the interval (after its last job's event is set)."""
    for _ in range(6000):
        if background._interval[0] is None:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the worker kept its switch interval")


def test_jobs_run_with_a_short_switch_interval_then_the_callers_is_back(interval):
    go = threading.Event()
    first, second = Fake(go), Fake()
    ready = background.request(first, ("a",))
    later = background.request(second, ("b",))  # (queued behind the first)
    go.set()
    assert ready.wait(60) and later.wait(60)
    assert first.seen == second.seen == [pytest.approx(background.WORKER_SWITCH_S)]
    drained()
    assert sys.getswitchinterval() == 0.005


def test_an_interval_set_meanwhile_is_kept(interval):
    go = threading.Event()
    fake = Fake(go)
    ready = background.request(fake, ("c",))
    for _ in range(6000):  # (the job started)
        if fake.seen:
            break
        threading.Event().wait(0.01)
    sys.setswitchinterval(0.002)  # the user's own, while the worker compiles
    go.set()
    assert ready.wait(60)
    drained()
    assert sys.getswitchinterval() == 0.002


def test_a_shorter_interval_of_the_callers_is_kept_during_jobs(interval):
    sys.setswitchinterval(1e-5)
    mine = sys.getswitchinterval()  # (kept in microseconds)
    fake = Fake()
    assert background.request(fake, ("d",)).wait(60)
    assert fake.seen == [mine]
    drained()
    assert sys.getswitchinterval() == mine


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_child_forked_during_a_job_gets_the_callers_interval_back(interval):
    go = threading.Event()
    fake = Fake(go)
    ready = background.request(fake, ("e",))
    for _ in range(6000):  # (the job started: the interval is the worker's)
        if fake.seen:
            break
        threading.Event().wait(0.01)
    pid = os.fork()
    if pid == 0:  # the child: the job queued again, made by its own worker, then the interval
        code = 1
        try:
            go.set()
            if ready.wait(60):
                drained()
                code = 0 if sys.getswitchinterval() == 0.005 else 2
        finally:
            os._exit(code)
    go.set()
    assert ready.wait(60)
    assert os.waitpid(pid, 0)[1] == 0
    drained()
    assert sys.getswitchinterval() == 0.005
