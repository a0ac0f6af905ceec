"""compile_child's server sooner and cheaper (BENCHMARKS.md "hcold8"): it starts at a cold
program's first request when that is the packed driver (a handle's `child_jobs`: two groups'
worth), counting the job the worker already took; a child imports the backend modules, not
tapernn's public API (its start ~0.5 s CPU less); a server that ended before its jobs did is
not started again by a later request."""

import os
import queue
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tapernn.backends import compile_child, packed
from tapernn.launch import LAUNCHER_VARIABLES, cpus

ROOT = Path(compile_child.__file__).resolve().parents[2]
FEED = compile_child._feed  # (the `deciding` fixture's feeder does nothing)


class _Handle:
    def __init__(self, name, folder, weight=1):
        self.name, self.folder = name, folder
        if weight != 1:
            self.child_jobs = weight

    def has(self, key):
        return False

    def child_recipe(self, key):
        return self.name, "kernel", self.folder, ("m", "C", ())


class _Stub:
    """A server that starts nothing (offered's decision only)."""

    def __init__(self):
        self.proc = type("P", (), {"poll": staticmethod(lambda: None)})()


@pytest.fixture
def deciding(monkeypatch):
    """compile_child.offered's decision alone: no process, no feeder, an idle machine."""
    if cpus() < 2:
        pytest.skip("one core: no child ever")
    for v in LAUNCHER_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.delenv(compile_child.ENV, raising=False)
    monkeypatch.setattr(compile_child, "MAX", [1])
    monkeypatch.setattr(compile_child, "Server", _Stub)
    monkeypatch.setattr(compile_child, "_feed", lambda server, jobs: None)
    for name, empty in (("_tried", set()), ("_cold", {}), ("_jobs", {}), ("_broken", [False])):
        monkeypatch.setattr(compile_child, name, empty)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))


def _offered(monkeypatch, queued, asked=None):
    monkeypatch.setattr(compile_child, "_server", [None])
    jobs = queue.Queue()
    for handle in queued:
        jobs.put((handle, ("key",), None))
    compile_child.offered(jobs, None if asked is None else (asked, ("key",), None))
    return compile_child._server[0] is not None


@pytest.mark.usefixtures("deciding")
def test_the_server_starts_at_the_packed_drivers_request(monkeypatch, tmp_path):
    assert packed._Handle.child_jobs == 2
    driver = _Handle("tapernn_k8_p", tmp_path, weight=2)
    group, other = _Handle("tapernn_k8_a", tmp_path), _Handle("tapernn_k8_b", tmp_path)
    assert _offered(monkeypatch, [], asked=driver)  # (the worker took it already)
    assert _offered(monkeypatch, [driver], asked=driver)  # (still queued: counted once)
    assert not _offered(monkeypatch, [], asked=group)  # (one group: the worker alone)
    assert _offered(monkeypatch, [other], asked=group)
    assert not _offered(monkeypatch, [group], asked=group)


@pytest.mark.usefixtures("deciding")
def test_a_server_that_ended_early_is_not_started_again(monkeypatch, tmp_path):
    class Ending:  # ready, then gone at its first job (killed)
        def __init__(self):
            self.replies = ["ready", None]
            self.err = tempfile.TemporaryFile()  # noqa: SIM115 -- (closed by stop)
            self.fed = 0

        def reply(self, timeout):
            return self.replies.pop(0)

        def send(self, recipe):
            return True

        def stop(self):
            self.err.close()

    monkeypatch.setattr(compile_child.numba_setup, "LOCKED", [True])
    monkeypatch.setattr(compile_child.numba_setup, "setup", lambda: None)
    jobs = queue.Queue()
    for n in "abc":
        jobs.put((_Handle(f"tapernn_k8_{n}", tmp_path), ("key",), None))
    server = Ending()
    monkeypatch.setattr(compile_child, "_server", [server])
    FEED(server, jobs)
    assert compile_child._server[0] is None and jobs.qsize() == 3  # (its job given back)
    assert not _offered(monkeypatch, list(jobs.queue))  # (before: a second server)


def test_a_child_imports_the_backend_not_the_public_api():
    code = compile_child._RUN + "; print('tapernn.nn' in sys.modules, tapernn.__path__[0])"
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    assert out.stdout.split() == ["False", str(ROOT / "tapernn")]
