"""A pytest plugin that records, per test, its wall time and the numba compiles and cache loads
it caused (tools/ci_time.py reads the records): where a cold-kernel-cache CI run spends its time.

    CI_PROFILE_DIR=/tmp/prof python -m pytest -p tools.ci_profile -n 2 --dist loadfile

One JSON line per test in $CI_PROFILE_DIR/<worker>.jsonl: nodeid, wall (setup + call +
teardown) and process CPU seconds, and for every outermost numba Dispatcher.compile it ran (any thread): the kernel
(module.qualname), its signature, seconds, and whether numba's disk cache had it ("load") or it
compiled ("compile"). numba is not imported by this plugin: its Dispatcher.compile is wrapped
when something else imports numba (an import hook), so tests see the same imports as without it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time

import pytest

_events: list[dict] = []
_events_lock = threading.Lock()
_depth = threading.local()


def _wrap_dispatcher() -> None:
    from numba.core import dispatcher

    original = dispatcher.Dispatcher.compile

    def compile(self, sig):
        depth = getattr(_depth, "n", 0)
        if depth:
            return original(self, sig)
        misses = sum(self._cache_misses.values())
        _depth.n = 1
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(self, sig)
        finally:
            _depth.n = 0
            seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
            func = getattr(self, "py_func", None)
            name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}"
            kind = "compile" if sum(self._cache_misses.values()) > misses else "load"
            with _events_lock:
                _events.append(
                    {
                        "kernel": name,
                        "sig": str(sig),
                        "s": round(seconds, 4),
                        "cpu": round(cpu, 4),
                        "kind": kind,
                    }
                )

    dispatcher.Dispatcher.compile = compile


class _AfterNumbaImport(importlib.abc.MetaPathFinder):
    """Wraps numba's dispatcher once the `numba` package has been imported by someone."""

    busy = False

    def find_spec(self, name, path=None, target=None):
        if name != "numba" or self.busy:
            return None
        self.busy = True  # (find_spec below asks the finders again, this one included)
        try:
            spec = importlib.util.find_spec("numba")
        finally:
            self.busy = False
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_wrap(module):
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
                _wrap_dispatcher()

        spec.loader.exec_module = exec_then_wrap
        return spec


_test = {"explicit": False, "reads": set(), "subprocesses": 0}


def _watch_backend_choice() -> None:
    """Record, per test, the backends library code read from the session's default (no
    set_backend in this test yet) and the subprocesses started (they inherit $TAPERNN_BACKEND):
    a test with neither runs the same whatever $TAPERNN_TEST_BACKEND says."""
    import subprocess

    import tapernn
    from tapernn import backends

    get_backend, set_backend = backends.get_backend, backends.set_backend

    def watched_get():
        value = get_backend()
        if not _test["explicit"]:
            _test["reads"].add(value)
        return value

    def watched_set(name):
        _test["explicit"] = True
        return set_backend(name)

    backends.get_backend = watched_get  # (policy() looks it up in the module at each call)
    backends.set_backend = tapernn.set_backend = watched_set
    popen_init = subprocess.Popen.__init__

    def watched_popen(self, *args, **kwargs):
        _test["subprocesses"] += 1
        return popen_init(self, *args, **kwargs)

    subprocess.Popen.__init__ = watched_popen


def pytest_configure(config):
    _watch_backend_choice()
    if "numba" in sys.modules:
        _wrap_dispatcher()
    else:
        sys.meta_path.insert(0, _AfterNumbaImport())


def _out_path(config) -> str:
    directory = os.environ.get("CI_PROFILE_DIR", "/tmp/ci-profile")
    os.makedirs(directory, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return os.path.join(directory, f"{worker}.jsonl")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with _events_lock:
        _events.clear()
    _test.update(explicit=False, reads=set(), subprocesses=0)
    start, cpu = time.perf_counter(), time.process_time()
    yield
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    with _events_lock:
        events = list(_events)
        _events.clear()
    record = {
        "test": item.nodeid,
        "wall": round(wall, 4),
        "cpu": round(cpu, 4),
        "t": round(time.time(), 2),
    }
    record["events"] = events
    record["default_reads"] = sorted(_test["reads"])
    record["subprocesses"] = _test["subprocesses"]
    with open(_out_path(item.config), "a") as f:
        f.write(json.dumps(record) + "\n")
