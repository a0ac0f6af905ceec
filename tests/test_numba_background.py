"""numba kernels compiled in the background (tapernn/backends/background.py): a top-level
program's calls before the switch call ($TAPERNN_NUMBA_SWITCH_CALL, default 2) run NumPy --
loop bodies too, however often a loop calls them -- while the worker compiles, every later call
the kernels, whatever the timing, so runs stay reproducible bit for bit; and every call agrees
with the reference interpreter and the NumPy backend to 1e-12 in float64."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_backends import _arrays, every_op

import tapernn as tn
from tapernn import nn
from tapernn.backends import background, numba_available, numba_backend, worker_pause
from tapernn.interpret import interpret

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def later(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")


def _slots(compiled):
    return {k: v for k, v in compiled.program.fn.__kwdefaults__.items() if k.startswith("nks")}


def test_first_call_runs_numpy_the_second_the_kernel(later, monkeypatch):
    monkeypatch.setattr(numba_backend, "_kernels", {})  # a kernel not compiled in this process
    x = _arrays(np.float64, seed=5)
    g = tn.trace(every_op, *x)
    c = tn.compile(g, backend="numba")
    assert c.report.backend == "numba" and c.report.compiled_kernels == 1
    assert _slots(c) and all(isinstance(v, background.Site) for v in _slots(c).values())
    ref = interpret(g, *x)[0]
    first = c(*x)
    np.testing.assert_array_equal(first, tn.compile(g, backend="numpy")(*x))  # NumPy ran
    assert all(isinstance(v, background.Site) for v in _slots(c).values())
    second = c(*x)  # waits for the kernel, then runs it and puts it in the site's place
    assert not any(isinstance(v, background.Site) for v in _slots(c).values())
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    np.testing.assert_array_equal(second, tn.compile(g, backend="numba")(*x))  # numba ran
    np.testing.assert_array_equal(c(*x), second)
    assert np.abs(first - second).max() > 0  # (the two lowerings differ in the last bits)
    np.testing.assert_allclose(first, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(second, ref, rtol=1e-12, atol=1e-12)
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    # compiled already in this process: still NumPy at call 1 (whether a kernel is ready must
    # never decide which lowering a call runs), numba from the switch call
    again = tn.compile(g, backend="numba")
    np.testing.assert_array_equal(again(*x), first)
    np.testing.assert_array_equal(again(*x), second)
    assert not any(isinstance(v, background.Site) for v in _slots(again).values())


def test_a_kernel_that_fails_in_the_background_leaves_its_groups_on_numpy(later, monkeypatch):
    def broken(source):
        raise RuntimeError("simulated compile failure")

    monkeypatch.setattr(numba_backend, "_load", broken)
    monkeypatch.setattr(numba_backend, "_kernels", {})
    x = _arrays(np.float64, seed=6)
    g = tn.trace(every_op, *x)
    c = tn.compile(g, backend="numba")
    outs = [c(*x) for _ in range(3)]  # no exception in the caller's calls
    assert all(isinstance(v, background.Site) for v in _slots(c).values())
    assert "simulated compile failure" in next(iter(numba_backend._kernels.values())).error
    assert any("simulated compile failure" in why for why in c.report.fallbacks)  # reported
    for out in outs:
        np.testing.assert_allclose(out, interpret(g, *x)[0], rtol=1e-12, atol=1e-12)


def _train(steps, x, gy, hidden=4, built=None):
    seq = nn.Sequencer(nn.FastLSTM(x.shape[-1], hidden))
    if built is not None:
        built.append(seq)
    outs = []
    for _ in range(steps):
        y = seq.forward(x)
        seq.zero_grad_parameters()
        gx = seq.backward(x, gy)
        outs.append([y.copy(), gx.copy()] + [p.grad.copy() for p in seq.parameters()])
    return outs


def test_training_steps_agree_with_numpy_while_kernels_arrive(later):
    rng = np.random.default_rng(0)
    x, gy = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 4))
    before = tn.get_backend()
    try:
        tn.set_backend("numpy")
        tn.manual_seed(7)
        ref = _train(3, x, gy)
        tn.set_backend("numba")
        tn.manual_seed(7)
        got = _train(3, x, gy)
    finally:
        tn.set_backend(before)
    for step, (a, b) in enumerate(zip(ref, got)):
        for u, v in zip(a, b):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12, err_msg=f"step {step}")


_CHILD = """
import hashlib, numpy as np, tapernn as tn
x = np.linspace(-3, 3, 12).reshape(3, 4)
c = tn.compile(tn.trace(lambda a: tn.tanh(a) * tn.sigmoid(a) + tn.exp(a), x), backend="numba")
outs = [c(x) for _ in range(3)]
assert abs(outs[2] - (np.tanh(x) / (1 + np.exp(-x)) + np.exp(x))).max() < 1e-12
print(" ".join(hashlib.sha1(o.tobytes()).hexdigest()[:12] for o in outs))
"""


def test_runs_are_reproducible_bit_for_bit_cold_or_warm_cache(tmp_path):
    env = dict(
        os.environ,
        TAPERNN_KERNEL_CACHE=str(tmp_path),
        PYTHONPATH=str(ROOT),
        TAPERNN_NUMBA_BACKGROUND="1",
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs[0] == runs[1]  # cold (compiling while call 1 runs) and warm: the same bits
    assert runs[0][1] == runs[0][2]  # calls 2 and 3 both ran the kernel


def _train_on(backend, steps, x, gy, hidden, built=None):
    before = tn.get_backend()
    try:
        tn.set_backend(backend)
        tn.manual_seed(7)
        return _train(steps, x, gy, hidden, built)
    finally:
        tn.set_backend(before)


def _assert_same(a, b, same=True):
    equal = [np.array_equal(u, v) for u, v in zip(a, b)]
    assert all(equal) if same else not all(equal)


# (4, 2): a whole-program kernel calling a loop kernel; (520, 2): values of 4 * 520 * 2 > 4096
# elements, so a Python loop calling the body's fused-group kernels once per timestep
@pytest.mark.parametrize("hidden", [4, 520])
def test_the_switch_call_is_fixed_whatever_the_compile_time(later, monkeypatch, hidden):
    rng = np.random.default_rng(1)
    x, gy = rng.standard_normal((3, 2, 3)), rng.standard_normal((3, 2, hidden))
    ref = _train_on("numpy", 3, x, gy, hidden)
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    eager = _train_on(
        "numba", 3, x, gy, hidden
    )  # numba from call 1 (and every kernel compiled now)
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    ready = _train_on("numba", 3, x, gy, hidden)  # kernels compiled already in this process
    # a slow compile: new handles (loaded again from numba's cache), each held 0.2 s
    from tapernn.backends import numba_loop, numba_program

    for module, name in ((numba_backend, "_kernels"), (numba_loop, "_loops")):
        monkeypatch.setattr(module, name, {})
    monkeypatch.setattr(numba_program, "_programs", {})
    import time

    for cls in (numba_backend.Kernel, numba_loop.LoopKernel, numba_program.ProgramKernel):
        slow = cls.__dict__["prepare"]

        def held(self, *a, _slow=slow, **k):
            time.sleep(0.2)
            return _slow(self, *a, **k)

        monkeypatch.setattr(cls, "prepare", held)
    slowly = _train_on("numba", 3, x, gy, hidden)
    assert background.wait(timeout=120)
    for step in range(3):
        _assert_same(ready[step], slowly[step])  # bit for bit, whatever the compile time
        # call 1 (its loop's every step) on NumPy, calls 2 and 3 on the kernels
        _assert_same(eager[step], slowly[step], same=step > 0)
        for u, v in zip(ref[step], slowly[step]):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12, err_msg=f"step {step}")


@pytest.mark.parametrize("hidden", [4, 520])
def test_a_model_whose_kernels_fail_in_the_background_runs_numpy_and_says_so(
    later, monkeypatch, hidden
):
    from tapernn.backends import numba_loop, numba_program

    def broken(source):
        raise RuntimeError("simulated compile failure")

    for module in (numba_backend, numba_loop):
        monkeypatch.setattr(module, "_load", broken)
    monkeypatch.setattr(numba_backend, "_kernels", {})
    monkeypatch.setattr(numba_loop, "_loops", {})
    monkeypatch.setattr(numba_program, "_programs", {})
    rng = np.random.default_rng(4)
    x, gy = rng.standard_normal((3, 2, 3)), rng.standard_normal((3, 2, hidden))
    ref = _train_on("numpy", 3, x, gy, hidden)
    built = []
    got = _train_on("numba", 3, x, gy, hidden, built)  # nothing raises in the user's steps
    report = built[0].compile_report()
    for step, (a, b) in enumerate(zip(ref, got)):
        for u, v in zip(a, b):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12, err_msg=f"step {step}")
    said = [*report.fallbacks, report.kernel, *(loop.kernel for loop in report.loops)]
    assert any("simulated compile failure" in why for why in said), said


def test_the_switch_call_is_a_setting(later, monkeypatch):
    x = _arrays(np.float64, seed=9)
    g = tn.trace(every_op, *x)
    monkeypatch.setenv("TAPERNN_NUMBA_SWITCH_CALL", "3")
    c = tn.compile(g, backend="numba")
    outs = [c(*x) for _ in range(4)]
    np.testing.assert_array_equal(outs[0], outs[1])  # calls 1 and 2: NumPy
    np.testing.assert_array_equal(outs[0], tn.compile(g, backend="numpy")(*x))
    np.testing.assert_array_equal(outs[2], outs[3])  # calls 3 and 4: the kernel
    assert np.abs(outs[1] - outs[2]).max() > 0
    assert not any(isinstance(v, background.Site) for v in _slots(c).values())
    monkeypatch.setenv("TAPERNN_NUMBA_SWITCH_CALL", "0")
    with pytest.raises(tn.TapernnError, match="TAPERNN_NUMBA_SWITCH_CALL"):
        tn.compile(g, backend="numba")


def test_one_worker_thread_however_many_programs_compile(later):
    import threading

    rng = np.random.default_rng(3)
    for k in range(4):
        x = rng.standard_normal((2, 3 + k))
        c = tn.compile(tn.trace(lambda a: tn.tanh(a) * tn.exp(a) + a, x), backend="numba")
        c(x)
        c(x)
    assert background.wait(timeout=120)
    workers = [t for t in threading.enumerate() if t.name == "tapernn-numba-compiler"]
    assert len(workers) <= 1 and all(t.daemon for t in workers)


_EXIT = """
import sys, threading, numpy as np, tapernn as tn
from tapernn.backends import background
x = np.linspace(-2, 2, 15).reshape(3, 5)
c = tn.compile(tn.trace(lambda a: tn.tanh(a) * tn.sigmoid(a) + tn.exp(-a), x), backend="numba")
c(x)
print("in flight" if not background.wait(0) else "done", flush=True)
"""


def test_the_interpreter_exits_while_a_kernel_compiles(tmp_path):
    env = dict(
        os.environ,
        TAPERNN_KERNEL_CACHE=str(tmp_path),  # empty: a cold compile is in flight at exit
        PYTHONPATH=str(ROOT),
        TAPERNN_NUMBA_BACKGROUND="1",
    )
    run = subprocess.run(
        [sys.executable, "-c", _EXIT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "in flight" and "Fatal" not in run.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_compiles_the_kernels_its_parent_was_compiling(later, monkeypatch):
    import threading
    import time

    parent, gate = os.getpid(), threading.Event()
    prepare = numba_backend.Kernel.prepare

    def held_in_the_parent(self, key=None, warm=False):
        if os.getpid() == parent:
            gate.wait(60)  # the parent's worker is busy with this job when the fork happens
        return prepare(self, key, warm)

    monkeypatch.setattr(numba_backend.Kernel, "prepare", held_in_the_parent)
    monkeypatch.setattr(numba_backend, "_kernels", {})
    x = _arrays(np.float64, seed=8)
    g = tn.trace(every_op, *x)
    ref = interpret(g, *x)[0]
    c = tn.compile(g, backend="numba")
    c(*x)  # requests the kernel: the parent's worker holds it
    pid = os.fork()
    if pid == 0:  # the child: no worker thread was copied; its second call must not hang
        try:
            out = c(*x)
            swapped = not any(isinstance(v, background.Site) for v in _slots(c).values())
            os._exit(0 if swapped and np.allclose(out, ref, rtol=1e-12, atol=1e-12) else 1)
        except BaseException:  # noqa: BLE001 -- a forked child must never return into pytest
            os._exit(2)
    try:
        deadline = time.monotonic() + 120
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung waiting for a kernel its parent was compiling")
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        gate.set()
    assert background.wait(timeout=120)


_TWICE = """
import numpy as np, tapernn as tn
from tapernn import nn
tn.set_backend("numba")
rng = np.random.default_rng(0)
x, g = rng.standard_normal((5, 4, 24)), rng.standard_normal((5, 4, 24))
runs = []
for _ in range(2):  # the same model twice: the second finds the first's kernels compiled
    tn.manual_seed(0)
    m = nn.Sequencer(nn.GRU(24, 24))
    out = []
    for _ in range(3):
        y = m.forward(x)
        m.zero_grad_parameters()
        out += [y.copy(), m.backward(x, g).copy()] + [p.grad.copy() for p in m.parameters()]
        m.update_parameters(0.1)
    runs.append(out)
print(all(np.array_equal(a, b) for a, b in zip(*runs)))
"""


def test_a_model_built_twice_in_one_process_computes_the_same_bits():
    # before: the second model's first call ran the kernels the first model had compiled,
    # the first model's ran NumPy; the step's results differed in the last bits (a fresh
    # process; the kernel disk cache warm or cold, either shows it)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TAPERNN_NUMBA_BACKGROUND="1")
    done = subprocess.run(
        [sys.executable, "-c", _TWICE], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["True"]


def test_a_dropped_model_leaves_no_compile_request_holding_its_arrays(
    later, monkeypatch, packed_now
):
    """A request keeps its handle only weakly: a split loop's step loops hold the program's
    arrays, and the request table held every one a process ever asked for (a model made and
    dropped per run of a sweep stayed in memory: ~0.2 MiB a model at (17, 256) float32)."""
    import gc
    import weakref

    from tapernn.backends import step_loop

    made, init = [], step_loop.StepLoop.__init__

    def spy(self, source, arrays, *rest):
        init(self, source, arrays, *rest)
        made.extend([weakref.ref(self), *(weakref.ref(a) for a in arrays)])

    monkeypatch.setattr(step_loop.StepLoop, "__init__", spy)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 17, 256)).astype(np.float32)
    g = rng.standard_normal((6, 17, 256)).astype(np.float32)
    was = tn.get_backend()
    tn.set_backend("numba")
    try:
        m = nn.Sequencer(nn.FastLSTM(256, 256)).astype("float32")
        m.set_plan_options(tn.PlanOptions(layout="batch", batch_split="on", own_threads="on"))
        for _ in range(4):  # (the step loops are asked for at the first split call)
            m.forward(x)
            m.backward(x, g)
        assert background.wait(timeout=300)
    finally:
        tn.set_backend(was)
    held = [r for r in made if r() is not None]  # (a loop translated again replaced some)
    assert held
    del m
    gc.collect()
    gc.collect()  # (a cycle a finaliser of the first collection let go of)
    assert [r for r in held if r() is not None] == []


def test_a_failed_step_loop_compile_keeps_no_frame_of_its_loop(monkeypatch):
    """numba keeps a failed compile's exception (its failed-compile cache): the exception's
    traceback held StepLoop.prepare's frame, so the loop and its arrays outlived its model (the
    cold CI's dropped-model failure above: a step loop's typing failed after a float64 model
    of the same fused kernels)."""
    import gc
    import weakref

    from tapernn.backends import step_loop

    kept = []

    class Failing:  # (a kernel whose compile fails, keeping its exception as numba does)
        def compile(self, key):
            e = RuntimeError("typing failed")
            kept.append(e)
            raise e

    source = "# a step loop's source of this test alone"
    monkeypatch.setitem(step_loop._kernels, source, Failing())
    loop = step_loop.StepLoop(source, [np.zeros(3)], 4, False)
    assert not loop.prepare(("types",))
    assert loop.error.startswith("RuntimeError: typing failed")
    dead = weakref.ref(loop)
    del loop
    gc.collect()
    assert kept and dead() is None


def test_a_kernel_failure_lets_go_of_every_chained_traceback():
    """background.failure, which every kernel handle's except clause calls: the first line of
    the message, and no traceback left on the exception or on those it chains (each holds the
    frames -- and through them the handles and arrays -- of where it was raised)."""
    try:
        try:
            raise ValueError("inner")
        except ValueError as inner:
            raise RuntimeError("typing failed\nsecond line") from inner
    except RuntimeError as e:
        caught = e
    assert caught.__traceback__ is not None and caught.__cause__.__traceback__ is not None
    assert background.failure(caught) == "RuntimeError: typing failed"
    assert caught.__traceback__ is None and caught.__cause__.__traceback__ is None
    assert background.failure(RuntimeError()) == "RuntimeError: "


def test_a_held_worker_takes_no_job_until_a_wait_for_a_kernel(monkeypatch):
    """background.held (a trace whose kernels are due calls later): the worker pauses before its
    next job rather than compile beside the trace; a wait for a kernel lets it go on at once
    (no deadlock), and after the hold it takes jobs as before."""
    log, seen = [], threading.Event()  # seen: the worker paused, or ran the job instead

    class Fake:
        error = None

        def prepare(self, key):
            log.append(key)
            seen.set()

        def has(self, key):
            return True

    class Watched(threading.Condition):
        def wait(self, timeout=None):
            if timeout is None:  # (worker_pause.turn's wait for the hold's end or a waiter)
                log.append("paused")
                seen.set()
            return super().wait(timeout)

    monkeypatch.setattr(worker_pause, "_paused", Watched())
    background.wait(60)  # (earlier tests' jobs done: the next job is this test's)
    with background.held():
        ready = background.request(Fake(), ("held",))
        assert seen.wait(60)  # (a safety net only: the worker does one or the other)
        assert log == ["paused"]
        assert ready.wait(60)  # the wait lets the held worker make it
    assert log == ["paused", ("held",)]
    background.request(Fake(), ("after",)).wait(60)
    assert log == ["paused", ("held",), ("after",)]
