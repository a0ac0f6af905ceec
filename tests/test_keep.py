"""A program's large per-call arrays made again in the previous call's memory once nothing else
references them (keep.py, issue 19): a steady training loop's slab is the same array step after
step (no fresh pages: the page faults counted), results the caller still holds are never written
(a new array then), and the results are those of np.empty each call bit for bit and the NumPy
equations' (float64, 1e-12), values and every gradient, on both backends."""

import contextlib
import resource
import weakref

import numpy as np
import pytest
from cell_reference import fastlstm_step
from test_batch_split import D, T, check_equations, train

import tapernn as tn
from tapernn import keep, nn
from tapernn.backends import numba_available

H = 130
BACKENDS = ["numpy"] + (["numba"] if numba_available() else [])


@pytest.fixture(autouse=True)
def keep_all(monkeypatch):
    monkeypatch.setattr(keep, "KEEP_MIN_BYTES", 0)  # every per-call array kept
    tn.set_blas_threads(1)  # (no timed choice of threads or layout: models compared bit for bit)
    yield
    tn.set_blas_threads("auto")


def model(backend, hidden=H, d=D):
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(d, hidden))
    return m.set_plan_options(tn.PlanOptions(backend=backend, layout="batch"))


@contextlib.contextmanager
def off():
    """np.empty each call: the threshold is read when a program is compiled (a model's calls
    compile theirs)."""
    old, keep.KEEP_MIN_BYTES = keep.KEEP_MIN_BYTES, 1 << 62
    try:
        yield
    finally:
        keep.KEEP_MIN_BYTES = old  # (not 0: every later model of the worker would keep all)


def step(m, x, g):
    m.forward(x)
    m.zero_grad_parameters()
    m.backward(x, g)


def test_keeper_reuses_only_an_array_nothing_else_holds():
    k = keep.Keeper()
    f64 = np.dtype(np.float64)
    a = k((4, 5), f64)
    a[...] = 1.0
    first = weakref.ref(a)
    del a
    b = k((4, 5), f64)
    assert b is first() and (k.made, k.reused) == (1, 1)
    held = b[1:]  # (a view holds it through .base)
    del b
    c = k((4, 5), f64)
    assert c is not held.base and (k.made, k.reused) == (2, 1)
    c[...] = 2.0
    assert np.all(held == 1.0)  # the caller's array untouched
    del c
    mv = memoryview(k((4, 5), f64))  # (reused; a buffer export holds it)
    assert k((4, 5), f64) is not mv.obj
    assert (k.made, k.reused) == (3, 2) and k.nbytes == 160
    k.release()
    assert k.nbytes == 0


def test_a_python_that_counts_references_otherwise_keeps_nothing(monkeypatch):
    """The reuse test compares refs() with the count measured at import, and keeps nothing
    where one more reference does not raise it (a getrefcount that misses the caller's): the
    caller's array is then never handed out again, whatever the count says."""
    k = keep.Keeper()
    f64 = np.dtype(np.float64)
    a = k((3,), f64)
    assert k.refs() == keep._ALONE + 1 and not k.free()  # (the caller's `a`)
    del a
    assert k.free() and keep.KEEPING
    monkeypatch.setattr(keep, "KEEPING", False)
    monkeypatch.setattr(keep, "_ALONE", k.refs() + 1)  # (as if a caller's reference were unseen)
    held = k((3,), f64)
    assert k((3,), f64) is not held and (k.made, k.reused) == (3, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_slab_is_the_same_array_step_after_step(backend, rng):
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    m = model(backend)
    step(m, x, g)
    step(m, x, g)  # (numba: the kernels from the second call on)
    slab = weakref.ref(m.forward(x).base)
    m.zero_grad_parameters()
    m.backward(x, g)
    for _ in range(2):
        y = m.forward(x)
        assert y.base is slab(), "a new slab although the previous one was free"
        del y
        m.zero_grad_parameters()
        m.backward(x, g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_held_by_the_caller_are_not_written(backend, rng):
    x = [rng.standard_normal((T, 16, D)) for _ in range(3)]
    g = [rng.standard_normal((T, 16, H)) for _ in range(3)]
    a, b = model(backend), model(backend)
    for k in range(2):
        step(a, x[k], g[k])
        with off():
            step(b, x[k], g[k])
    y1 = a.forward(x[0])
    a.zero_grad_parameters()
    gx1 = a.backward(x[0], g[0])  # (the input gradient lies in the slab's dead rows)
    y1_copy, gx1_copy = y1.copy(), gx1.copy()
    y2 = a.forward(x[2])
    a.zero_grad_parameters()
    gx2 = a.backward(x[2], g[2])
    assert y2.base is not y1.base
    np.testing.assert_array_equal(y1, y1_copy)
    np.testing.assert_array_equal(gx1, gx1_copy)
    with off():
        want = train(b, x[2], g[2])
    np.testing.assert_array_equal(y2, want[0])
    np.testing.assert_array_equal(gx2, want[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_kept_equals_fresh_and_numpy_equations(backend, rng):
    x, g = rng.standard_normal((T, 17, D)), rng.standard_normal((T, 17, H))
    a, b = model(backend), model(backend)
    for _ in range(3):  # other weights and inputs at each call
        got = train(a, x, g)
        with off():
            want = train(b, x, g)
        for u, v in zip(got[:2], want[:2]):
            np.testing.assert_array_equal(u, v)
        for k in got[2]:
            np.testing.assert_array_equal(got[2][k], want[2][k], err_msg=k)
        for m in (a, b):
            for p in m.parameters():
                p.data[...] += 0.01
        x = x + 0.1
    check_equations(a, fastlstm_step, 2, x, g, train(a, x, g), rng)


def _faults(f) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_steady_step_faults_no_fresh_slab_pages_in(rng):
    # a 48.7 MiB float64 slab (over glibc's 32 MiB mmap threshold: freed, it goes back to the OS
    # and a fresh one faults every page in: >= 24 faults even in 2 MiB huge pages)
    t, b, h = 64, 64, 256
    x, g = rng.standard_normal((t, b, 16)), rng.standard_normal((t, b, h))
    m = model("numpy", hidden=h, d=16)
    for _ in range(2):
        step(m, x, g)
    slab = m.forward(x).base.nbytes
    assert slab > 40 << 20
    pages = slab // (2 << 20)
    faults = min(_faults(lambda: step(m, x, g)) for _ in range(3))
    assert faults < pages // 3, f"{faults} page faults a step, a fresh slab would take >= {pages}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_does_not_hold_the_training_slab(backend, rng):
    # (the module's programs' Keepers are one group: a call drops the others' free arrays)
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    m = model(backend)
    for _ in range(3):
        step(m, x, g)
    train_slab = weakref.ref(m.forward(x).base)
    m.zero_grad_parameters()
    m.backward(x, g)
    m.evaluate()
    y = m.forward(x)
    assert train_slab() is None, "the training slab held through an evaluation call"
    eval_slab = weakref.ref(y.base)
    del y
    m.training()
    step(m, x, g)
    assert eval_slab() is None, "the evaluation slab held through a training step"


def test_a_call_drops_the_groups_other_free_arrays():
    a, b, group = keep.Keeper(), keep.Keeper(), []
    keep.join(group, [a])
    keep.join(group, [b, a])
    assert group == [a, b] and a.group is b.group is group
    f64 = np.dtype(np.float64)
    held = a((3,), f64)
    b((3,), f64)
    assert a.array is held  # (held by the caller: kept)
    del held
    b((3,), f64)
    assert a.array is None and b.array is not None and b.reused == 1
    a((3,), f64)
    keep.drop_free(group, [a])
    assert b.array is None and a.array is not None


def test_two_threads_never_get_the_same_array(monkeypatch):
    """A reuse's test and its hand-out are one step: a thread switch between them (forced here
    by a sleep after the test) must not let another thread's call take the same array."""
    import threading
    import time

    k = keep.Keeper()
    f64 = np.dtype(np.float64)
    del_me = k((8,), f64)  # (made; freed below: the next two calls compete for it)
    del del_me
    free = keep.Keeper.free

    def slow_free(self):
        out = free(self)
        time.sleep(0.05)  # (the GIL goes to the other thread here)
        return out

    monkeypatch.setattr(keep.Keeper, "free", slow_free)
    got = [None, None]

    def call(i):
        got[i] = k((8,), f64)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0] is not got[1] and not np.shares_memory(got[0], got[1])
