"""compile_child: a kernel-cache module compiled by a child process, loaded by the parent from
numba's cache (BENCHMARKS.md "hcold6"). One tiny kernel, two children (~2 s each: python,
numba's import, the compile); the rest needs no child (no warm-cache child, MPI, the switch,
a timeout)."""

import hashlib
import os

import numpy as np
import pytest

from tapernn.backends import compile_child, numba_available
from tapernn.backends.kernel_cache import numba_folders
from tapernn.errors import TapernnError
from tapernn.launch import LAUNCHER_VARIABLES

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed")

TEXT = """import numpy as np
from numba import njit


@njit(cache=True)
def kernel(x, y):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = x[i] * 2.5 + y[i] / 3.0 - x[i] * y[i]
    return out
"""


def _module(text):
    return "tapernn_k6_" + hashlib.sha1(text.encode()).hexdigest()[:20]


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No MPI, children allowed, no earlier jobs; the kernels' folder in tmp_path."""
    from numba import float64, types

    from tapernn.backends.numba_setup import setup

    setup()  # (numba's saves locked: compile_child.limit needs it)
    for v in LAUNCHER_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.delenv(compile_child.ENV, raising=False)
    monkeypatch.setattr(compile_child, "MAX", [1])
    monkeypatch.setattr(compile_child, "_jobs", {})
    return tmp_path, (types.Array(float64, 1, "C"), types.Array(float64, 1, "C"))


def _load_here(directory, name, text):
    from tapernn.backends.kernel_cache import import_written

    return import_written(directory, name, text.encode()).kernel


def test_a_child_compiles_and_the_parent_loads_its_cache(fresh, monkeypatch):
    tmp, sig = fresh
    directory = tmp / "kernels"
    name = _module(TEXT)
    started = compile_child.STARTED[0]
    job = compile_child.ask(name, TEXT, "kernel", [sig], directory)
    assert job is not None and compile_child.STARTED[0] == started + 1
    assert compile_child.settle(name) == ""  # (compiled)
    assert job.proc.poll() == 0
    folders = numba_folders(directory)
    assert any(any(f.glob(f"{name}.*.nbi")) for f in folders), "the child wrote numba's cache"
    kernel = _load_here(directory, name, TEXT)
    kernel.compile(sig)
    assert sum(kernel._cache_hits.values()) == 1 and not kernel._cache_misses  # (loaded)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(101), rng.standard_normal(101)
    np.testing.assert_array_equal(kernel(x, y), x * 2.5 + y / 3.0 - x * y)  # (NumPy: same ops)
    from numba import float32, types

    other = (types.Array(float32, 1, "C"),) * 2
    assert compile_child._cached(kernel, [sig], name, "kernel", directory)
    assert not compile_child._cached(kernel, [sig, other], name, "kernel", directory)
    # warm now: no second child for it, nor for another job on the same module
    monkeypatch.setattr(compile_child, "_jobs", {})
    assert compile_child.ask(name, TEXT, "kernel", [sig], directory) is None
    assert compile_child.STARTED[0] == started + 1


def test_a_child_started_where_another_tapernn_lies_imports_this_one(fresh, monkeypatch):
    """The child's path has this tapernn before its working directory: started from a folder
    holding another tapernn (a checkout), `python -m` imported that one and failed."""
    tmp, sig = fresh
    other = tmp / "checkout"
    (other / "tapernn" / "backends").mkdir(parents=True)
    (other / "tapernn" / "__init__.py").write_text("")
    (other / "tapernn" / "backends" / "__init__.py").write_text("")
    monkeypatch.chdir(other)
    text = TEXT + "\n# from a checkout\n"
    name = _module(text)
    assert compile_child.ask(name, text, "kernel", [sig], tmp / "kernels") is not None
    assert compile_child.settle(name) == ""


def test_a_failing_child_says_why_and_the_parent_compiles(fresh):
    tmp, sig = fresh
    bad = TEXT.replace("/ 3.0", '/ "3"')
    name = _module(bad)
    job = compile_child.ask(name, bad, "kernel", [sig], tmp / "kernels")
    assert job is not None
    why = compile_child.settle(name)
    assert why.startswith("child exited with 1: ") and "TypingError" in why, why
    assert compile_child.settle(name) == why  # (asked again: the same answer, no new wait)
    kernel = _load_here(tmp / "kernels", name, bad)
    with pytest.raises(Exception, match="(?i)typ"):  # (the parent's compile: as before)
        kernel.compile(sig)


def test_a_child_past_its_time_is_killed(fresh, monkeypatch):
    tmp, sig = fresh
    monkeypatch.setattr(compile_child, "TIMEOUT_S", [0.05])
    name = _module(TEXT + "\n# slow\n")
    job = compile_child.ask(name, TEXT + "\n# slow\n", "kernel", [sig], tmp / "kernels")
    assert job is not None
    assert compile_child.settle(name) == "child killed after 0 s"
    assert job.proc.poll() is not None  # (gone: no orphan)
    assert not os.path.exists(job.spec)
    assert not compile_child.running_for(TEXT)
    monkeypatch.setattr(compile_child, "TIMEOUT_S", [60.0])  # (one the parent's exit ends)
    name = _module(TEXT + "\n# at exit\n")
    job = compile_child.ask(name, TEXT + "\n# at exit\n", "kernel", [sig], tmp / "kernels")
    assert job is not None and os.path.exists(job.spec)
    compile_child._ended()
    assert job.proc.poll() is not None and not os.path.exists(job.spec)


def test_no_child_under_mpi_when_off_or_busy(fresh, monkeypatch):
    tmp, sig = fresh
    name = _module(TEXT)
    monkeypatch.setenv("PMI_RANK", "0")
    assert compile_child.limit() == 0
    assert compile_child.ask(name, TEXT, "kernel", [sig], tmp) is None
    monkeypatch.delenv("PMI_RANK")
    monkeypatch.setenv(compile_child.ENV, "0")
    assert compile_child.ask(name, TEXT, "kernel", [sig], tmp) is None
    monkeypatch.setenv(compile_child.ENV, "2")
    assert compile_child.limit() == 2
    monkeypatch.setenv(compile_child.ENV, "two")
    with pytest.raises(TapernnError, match="TAPERNN_COMPILE_CHILD: expected an integer"):
        compile_child.limit()
    monkeypatch.delenv(compile_child.ENV)

    class Running:  # (MAX children running already: none more)
        why = None
        proc = type("P", (), {"poll": lambda self: None})()

    monkeypatch.setattr(compile_child, "_jobs", {"other": Running()})
    assert compile_child.ask(name, TEXT, "kernel", [sig], tmp) is None


def test_a_module_naming_one_not_loaded_gets_no_child(fresh):
    tmp, sig = fresh
    text = "import sys\n_drv = sys.modules['tapernn_packed_0123456789abcdef0123']\n" + TEXT
    assert compile_child.ask(_module(text), text, "kernel", [sig], tmp) is None


def test_the_worker_makes_other_jobs_while_a_child_compiles(monkeypatch):
    """background._later: a job whose kernel a child compiles goes behind a job no child
    compiles; with none such queued the worker waits for the child's end."""
    import queue
    import threading
    import time

    from tapernn.backends import background

    jobs = queue.Queue()
    monkeypatch.setattr(background, "_jobs", jobs)
    busy = {"loop text", "other loop"}
    monkeypatch.setattr(compile_child, "running_for", lambda source: source in busy)

    class Handle:
        def __init__(self, source):
            self.source = source

    mine, other, ev = Handle("loop text"), Handle("group text"), threading.Event()
    jobs.put((mine, "key", ev))
    jobs.put((other, "key2", threading.Event()))
    assert background._later(*jobs.get())  # (put back: the other job first)
    assert [h for h, _, _ in jobs.queue] == [other, mine] and jobs.unfinished_tasks == 2
    jobs.get()
    jobs.task_done()
    twin = Handle("other loop")  # (a job a child compiles too: no reason to go behind it)
    jobs.put((twin, "key3", threading.Event()))
    item = jobs.get()
    threading.Timer(0.2, lambda: busy.discard("loop text")).start()
    t = time.monotonic()
    assert item[0] is mine and not background._later(*item)  # (waited for the child's end)
    assert time.monotonic() - t >= 0.15
    assert [h for h, _, _ in jobs.queue] == [twin]
    assert not background._later(other, "key2", threading.Event())  # (no child for it)


def test_a_save_where_the_folder_cannot_be_locked_still_saves(fresh, monkeypatch):
    """numba_setup.locked_saves on a file system without flock: numba's cache written anyway."""
    import fcntl

    tmp, sig = fresh

    def no_lock(fd, op):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_lock)
    text = TEXT + "\n# no flock\n"
    name = _module(text)
    kernel = _load_here(tmp, name, text)
    kernel.compile(sig)
    assert any(any(f.glob(f"{name}.kernel-*.nbi")) for f in numba_folders(tmp))
    assert any(any(f.glob(f"{name}.kernel-*.nbc")) for f in numba_folders(tmp))
