"""compile_child's server (BENCHMARKS.md "hcold8"): a child imports the backend modules, not
tapernn's public API (its start ~0.5 s CPU less); a server that ended before its jobs did is
not started again by a later request (the packed driver's packs job asks after it)."""

import os
import queue
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tapernn.backends import compile_child
from tapernn.launch import LAUNCHER_VARIABLES, cpus

ROOT = Path(compile_child.__file__).resolve().parents[2]
FEED = compile_child._feed  # (the `deciding` fixture's feeder does nothing)


class _Handle:
    def __init__(self, name, folder):
        self.name, self.folder = name, folder

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


def _offered(monkeypatch, queued):
    monkeypatch.setattr(compile_child, "_server", [None])
    jobs = queue.Queue()
    for handle in queued:
        jobs.put((handle, ("key",), None))
    compile_child.offered(jobs)
    return compile_child._server[0] is not None


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
    assert not _offered(monkeypatch, [h for h, _, _ in jobs.queue])  # (before: a second server)
    monkeypatch.setattr(compile_child, "_broken", [False])
    assert _offered(monkeypatch, [h for h, _, _ in jobs.queue])  # (the same jobs, no failure)


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
