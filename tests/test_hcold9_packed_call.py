"""The packed GEMM's driver from a later fixed call (BENCHMARKS.md "hcold9"): a model's switch
call waits for its fused groups alone, its loops' step GEMMs run NumPy's matmul up to the
packed call ($TAPERNN_NUMBA_PACKED_CALL), which waits for the driver if it is not ready -- the
bits of call n fixed by n, whenever the driver is made; the worker makes the driver behind the
groups; the report says from which call it runs."""

import queue
import threading

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.backends import background, compile_child, numba_available, packed, worker_pause

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.skipif(not packed.available(), reason="no packed kernel on this CPU"),
]

H, B, T = (
    130,
    5,
    3,
)  # (W (130, 520): packed; 5 rows: no batch split; its GEMM's bits not OpenBLAS's)


@pytest.fixture
def calls(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    monkeypatch.setenv("TAPERNN_NUMBA_SWITCH_CALL", "2")
    monkeypatch.setenv("TAPERNN_NUMBA_PACKED_CALL", "4")
    monkeypatch.setenv("TAPERNN_COMPILE_CHILD", "0")


@pytest.fixture
def slow_driver(monkeypatch):
    """Fresh driver handles (none made in this process) whose compile waits for `release` (10 s
    at most: then `timed_out`); yields (release, timed_out, the kernel's runs)."""
    release, timed_out, runs = threading.Event(), [], [0]

    class Held(packed._Handle):
        def prepare(self, key):
            if not release.wait(10):
                timed_out.append(key)
            super().prepare(key)

    monkeypatch.setattr(packed, "_HANDLES", {kind: Held(kind) for kind in packed.GEOMETRY})
    real = packed.run_kernel

    def counted(*args):
        runs[0] += 1
        return real(*args)

    monkeypatch.setattr(packed, "run_kernel", counted)  # (PackedSite.run, bound at its making)
    yield release, timed_out, runs
    release.set()
    background.wait(60)


@pytest.fixture
def numba():
    """The models here run under numba; the test ends on the backend it began on (it left
    numba set for every later test of its worker, which conftest's _backend_restored hid)."""
    before = tn.get_backend()
    tn.set_backend("numba")
    yield
    tn.set_backend(before)


def _model(seed=0):
    tn.manual_seed(seed)
    return nn.Sequencer(nn.FastLSTM(H, H))


def _step(m, x, g):
    y = np.array(m.forward(x))
    m.zero_grad_parameters()
    gx = np.array(m.backward(x, g))
    return [y, gx] + [p.grad.copy() for p in m.parameters()]


def _inputs():
    rng = np.random.default_rng(3)
    return rng.standard_normal((T, B, H)) * 0.1, rng.standard_normal((T, B, H))


def test_the_switch_call_does_not_wait_for_the_driver_which_runs_from_the_packed_call(
    calls, slow_driver, numba
):
    release, timed_out, runs = slow_driver
    m, (x, g) = _model(), _inputs()
    _step(m, x, g)  # call 1: NumPy
    _step(m, x, g)  # the switch call: the groups' kernels, NumPy's matmul (before: it waited
    assert not timed_out, "the switch call waited for the packed driver"  # for the driver)
    assert runs[0] == 0
    _step(m, x, g)  # call 3: still NumPy's matmul
    assert runs[0] == 0 and not timed_out
    release.set()
    _step(m, x, g)  # the packed call: waits for the driver, runs it
    assert runs[0] > 0 and not timed_out
    report = str(m.compile_report())
    assert "packed step GEMMs from call 4 (numba)" in report, report


def test_call_n_has_the_same_bits_whenever_the_driver_is_made(calls, monkeypatch, numba):
    x, g = _inputs()
    early = _model()
    ready = [_step(early, x, g)]
    assert background.wait(60)  # (every kernel made after call 1, the driver too)
    ready += [_step(early, x, g) for _ in range(4)]
    release = threading.Event()

    class Late(packed._Handle):
        def prepare(self, key):
            release.wait(30)  # (made only once the packed call waits for it)
            super().prepare(key)

    monkeypatch.setattr(packed, "_HANDLES", {kind: Late(kind) for kind in packed.GEOMETRY})
    late_model = _model()
    late = [_step(late_model, x, g) for _ in range(3)]
    release.set()
    late += [_step(late_model, x, g) for _ in range(2)]
    for n, (a, b) in enumerate(zip(ready, late), 1):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v, err_msg=f"call {n}")
    # without background compilation every kernel runs from call 1: the same bits from the
    # packed call on (no update between the calls: call n's bits are its lowering's)
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    eager_model = _model()
    eager = [_step(eager_model, x, g) for _ in range(5)]
    for n in (4, 5):
        for u, v in zip(eager[n - 1], ready[n - 1]):
            np.testing.assert_array_equal(u, v, err_msg=f"call {n}")


def test_the_packed_call_is_a_setting_checked(monkeypatch, numba):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    for bad in ("0", "-3", "x", "2.5", ""):
        monkeypatch.setenv("TAPERNN_NUMBA_PACKED_CALL", bad)
        with pytest.raises(tn.TapernnError, match="TAPERNN_NUMBA_PACKED_CALL"):
            background.packed_call()
        m, (x, _) = _model(), _inputs()
        with pytest.raises(tn.TapernnError, match="TAPERNN_NUMBA_PACKED_CALL"):
            m.forward(x)
    monkeypatch.setenv("TAPERNN_NUMBA_PACKED_CALL", "7")
    assert background.packed_call() == 7


class _Job:
    def __init__(self, last=False):
        self.queued_last = last


def test_the_worker_queue_keeps_the_driver_behind_the_groups():
    jobs = worker_pause.Jobs()
    driver, packs, groups = _Job(True), _Job(True), [_Job() for _ in range(3)]
    jobs.put((groups[0], None, None))
    jobs.put((driver, None, None))
    jobs.put((groups[1], None, None))  # (asked for after the driver: made before it)
    jobs.put((packs, None, None))
    jobs.put((groups[2], None, None))
    order = [jobs.get_nowait()[0] for _ in range(5)]
    assert order == [*groups, driver, packs]


def test_the_compile_server_takes_the_driver_last(monkeypatch):
    jobs = queue.Queue()
    driver, group = _Job(True), _Job()
    for job in (group, driver):  # (the server takes from the far end: the driver, before)
        jobs.put((job, None, None))
    monkeypatch.setattr(compile_child, "_recipe", lambda h, k: ("recipe", h))
    monkeypatch.setattr(compile_child, "_tried", set())
    assert compile_child._take(jobs)[0][0] is group
    assert compile_child._take(jobs)[0][0] is driver
