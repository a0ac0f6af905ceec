"""blas_twin compiles own_gemm's signatures for the dtype a GEMM asks for, not both float dtypes'
at the first GEMM (BENCHMARKS.md "hcold6": ~10 s of a cold compile a dtype). The module's
compile is a fake here (records what it is asked to compile): no numba compile runs."""

import numpy as np
import pytest

from tapernn.backends import blas_twin, numba_available
from tapernn.blas import limiter

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),
]


class _Gemm:
    def __init__(self):
        self.compiled = []  # (dtype name, a's layout, b's layout) per compile
        self.open = True

    def compile(self, sig):
        assert self.open, "compiled while compiling was disabled"
        self.compiled.append((str(sig[2].dtype), sig[0].layout, sig[1].layout))

    def disable_compile(self, value=True):
        self.open = not value

    def __call__(self, *args):
        raise AssertionError("the fake kernel is never run (fits() says no)")


class _Module:
    def __init__(self):
        self.gemm = _Gemm()

    def fits(self, a, b, out):
        return False  # (the caller's np.matmul runs: only the compiles are looked at)


@pytest.fixture
def fake(monkeypatch):
    import numba  # noqa: F401 -- (blas_twin runs only where numba is imported)

    mod = _Module()
    monkeypatch.setattr(blas_twin, "_HANDLE", blas_twin._Handle())
    monkeypatch.setattr(blas_twin, "kernels", lambda: mod)
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")  # (compiled in the call)
    return mod


def _gemm(dtype):
    a, b = np.ones((96, 128), dtype), np.ones((128, 64), dtype)
    with limiter.limit(1):  # (as in an owned call)
        return blas_twin.run(a, b, np.empty((96, 64), dtype))


def test_a_float32_gemm_compiles_float32_alone(fake):
    assert not _gemm(np.float32)
    layouts = [("C", "C"), ("A", "C"), ("C", "A")]
    assert fake.gemm.compiled == [("float32", *x) for x in layouts]
    assert not fake.gemm.open  # (closed again: other layouts convert)
    assert _HANDLE().types == {"float32"}
    assert _HANDLE().take(np.float32) is fake.gemm
    fake.gemm.compiled.clear()
    assert not _gemm(np.float32)  # (compiled once)
    assert fake.gemm.compiled == []


def test_a_float64_gemm_after_float32_compiles_float64(fake):
    _gemm(np.float32)
    fake.gemm.compiled.clear()
    assert not _gemm(np.float64)
    assert {d for d, _, _ in fake.gemm.compiled} == {"float64"}
    assert len(fake.gemm.compiled) == 3
    assert _HANDLE().types == {"float32", "float64"}
    assert not fake.gemm.open


def test_other_dtypes_compile_nothing(fake):
    assert _HANDLE().take(np.float16) is None
    assert _HANDLE().take(np.int64) is None
    assert fake.gemm.compiled == [] and not _HANDLE().error


def test_a_failed_compile_leaves_openblas(fake, monkeypatch):
    def boom(sig):
        raise RuntimeError("no such target")

    monkeypatch.setattr(fake.gemm, "compile", boom)
    assert not _gemm(np.float32)
    assert "RuntimeError: no such target" in _HANDLE().error
    assert _HANDLE().take(np.float32) is None
    assert not fake.gemm.open  # (closed again after the failure too)


def _HANDLE():
    return blas_twin._HANDLE


def test_a_child_compiles_a_dtype_and_openblas_runs_meanwhile(fake, monkeypatch, tmp_path):
    """With a compile child (faked: its process and compile), take() gives nothing while it
    runs -- the caller's np.matmul runs -- then loads (prepare: here the fake's compile)."""
    (tmp_path / "tapernn_own_gemm_x.py").write_text("# own_gemm's text\n")
    fake.__file__, fake.__name__ = str(tmp_path / "tapernn_own_gemm_x.py"), "tapernn_own_gemm_x"
    asked = []

    class Proc:
        code = None

        def poll(self):
            return self.code

    class Job:
        proc = Proc()
        waited = 0

        def wait(self):
            self.waited += 1
            return ""

    job = Job()

    def ask(name, text, function, sigs, directory, fn, tag):
        asked.append((name, function, [str(s[2].dtype) for s in sigs], fn, tag))
        return job

    monkeypatch.setattr(blas_twin.compile_child, "ask", ask)
    assert _HANDLE().take(np.float32) is None
    assert asked == [("tapernn_own_gemm_x", "gemm", ["float32"] * 3, fake.gemm, ":float32")]
    assert fake.gemm.compiled == []  # (nothing compiled here while the child runs)
    assert _HANDLE().take(np.float32) is None and len(asked) == 1
    job.proc.code = 0  # (the child is done)
    assert _HANDLE().take(np.float32) is fake.gemm  # (loaded: the fake compiles here)
    assert job.waited == 1 and len(fake.gemm.compiled) == 3 and len(asked) == 1


def test_two_threads_asking_at_once_start_one_child_and_compile_nothing(fake, monkeypatch):
    """An owned call's halves take() on two threads at once: one child, no compile here."""
    import threading
    import time

    fake.__file__, fake.__name__ = __file__, "tapernn_own_gemm_x"
    asked = []

    class Job:
        proc = type("P", (), {"poll": lambda self: None})()  # (running)

    def ask(*args):
        asked.append(args[0])
        time.sleep(0.05)  # (the other thread arrives meanwhile)
        return Job()

    monkeypatch.setattr(blas_twin.compile_child, "ask", ask)
    got = []
    threads = [threading.Thread(target=lambda: got.append(_HANDLE().take("float32")))]
    threads.append(threading.Thread(target=lambda: got.append(_HANDLE().take("float32"))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [None, None] and asked == ["tapernn_own_gemm_x"]
    assert fake.gemm.compiled == []


def test_with_background_compiling_no_child_while_the_worker_is_busy(fake, monkeypatch):
    """A step loop's child goes first: the own GEMM's is started at a call finding the
    worker idle (as its in-process compile was asked for)."""
    fake.__file__, fake.__name__ = __file__, "tapernn_own_gemm_x"
    asked = []

    class Job:
        proc = type("P", (), {"poll": lambda self: None})()

    monkeypatch.setattr(blas_twin.compile_child, "ask", lambda *a: asked.append(a[0]) or Job())
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    busy = [1]
    monkeypatch.setattr(blas_twin.background, "activity", lambda: (3, 2, busy[0]))
    assert _HANDLE().take("float64") is None and asked == []
    busy[0] = 0
    assert _HANDLE().take("float64") is None and asked == ["tapernn_own_gemm_x"]
    assert fake.gemm.compiled == []
