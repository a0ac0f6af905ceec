"""The default backend, "auto" (tapernn/backends/__init__.py): numba's kernels for small loops a
run calls often -- asked for at a top-level program's start call, run from its switch call (call
counts: the same bits whatever the timing) -- NumPy for everything else, and NumPy with a one-line
reason in the compile report where numba (or scipy, whose BLAS numba's matmul calls) is missing.
$TAPERNN_BACKEND and tn.set_backend choose among "numpy", "numba" and "auto"."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tapernn as tn
from tapernn import backends, nn
from tapernn.backends import background, numba_available

ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


@pytest.fixture
def chosen(monkeypatch):
    """The backend choice as a fresh process makes it (the suite pins "numpy": conftest.py)."""
    before = tn.get_backend()
    monkeypatch.setattr(backends, "_chosen", None)
    yield
    tn.set_backend(before)


def test_the_default_is_auto_and_the_environment_chooses(chosen, monkeypatch):
    monkeypatch.delenv("TAPERNN_BACKEND", raising=False)
    assert tn.get_backend() == "auto"
    for name in ("numpy", "auto") + (("numba",) if numba_available() else ()):
        monkeypatch.setattr(backends, "_chosen", None)
        monkeypatch.setenv("TAPERNN_BACKEND", name)
        assert tn.get_backend() == name
    monkeypatch.setattr(backends, "_chosen", None)
    monkeypatch.setenv("TAPERNN_BACKEND", "cuda")
    with pytest.raises(tn.TapernnError, match=r"\$TAPERNN_BACKEND: expected one of"):
        tn.get_backend()


def test_set_backend_takes_the_three_names_and_nothing_else(chosen):
    for name in ("numpy", "auto") + (("numba",) if numba_available() else ()):
        tn.set_backend(name)
        assert tn.get_backend() == name
    for bad in ("cuda", "", "NUMBA", None):
        with pytest.raises(tn.TapernnError, match="expected one of"):
            tn.set_backend(bad)
    assert tn.get_backend() == ("numba" if numba_available() else "auto")  # (unchanged)


def test_the_auto_calls_setting_is_checked(monkeypatch):
    monkeypatch.setenv("TAPERNN_AUTO_CALLS", "5,3")
    with pytest.raises(tn.TapernnError, match="TAPERNN_AUTO_CALLS"):
        backends.auto_calls()
    monkeypatch.setenv("TAPERNN_AUTO_CALLS", "ten")
    with pytest.raises(tn.TapernnError, match="TAPERNN_AUTO_CALLS"):
        backends.auto_calls()
    monkeypatch.setenv("TAPERNN_AUTO_CALLS", "2,7")
    assert backends.auto_calls() == (2, 7)


# a fresh interpreter where `blocked` cannot be imported (None in sys.modules: find_spec says
# it is not there, `import` raises ImportError), on the default backend
_BLOCKED = """
import sys
for name in sys.argv[1:]:
    sys.modules[name] = None
import numpy as np, tapernn as tn
from tapernn import nn
assert tn.get_backend() == "auto", tn.get_backend()
seq = nn.Sequencer(nn.FastLSTM(3, 4))
x = np.ones((3, 2, 3))
y = seq.forward(x)
seq.backward(x, np.ones_like(y))
report = seq.compile_report()
print(report.backend)
print(report.backend_note)
print(str(report).count(report.backend_note))
try:
    tn.set_backend("numba")
    print("numba accepted")
except tn.TapernnError as e:
    print("refused:", e)
print("numba imported" if "numba" in sys.modules and sys.modules["numba"] else "no numba")
"""


def _blocked(*names):
    env = {k: v for k, v in os.environ.items() if k != "TAPERNN_BACKEND"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKED, *names],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_without_numba_auto_is_numpy_and_the_report_says_why():
    backend, note, shown, numba_choice, imported = _blocked("numba")
    assert backend == "numpy"
    assert note == "auto: NumPy, since numba is not installed (pip install 'tapernn[fast]')"
    assert shown == "1"  # one line of str(report)
    assert numba_choice.startswith("refused:") and "numba is not installed" in numba_choice
    assert imported == "no numba"


@needs_numba
def test_without_scipy_auto_is_numpy_and_the_report_says_why():
    backend, note, shown, numba_choice, imported = _blocked("scipy")
    assert backend == "numpy"
    assert note.startswith("auto: NumPy, since scipy is not installed: numba's matmul needs")
    assert shown == "1"
    assert numba_choice == "numba accepted"  # (explicitly: its BLAS-free kernels still work)
    assert imported == "no numba"  # auto never imported it


_step = [0]  # the training step running (1, 2, ...)


def _train(backend, steps, hidden, x, gy, built=None):
    """`steps` forward + backward calls of one model at fixed weights (so a step's results
    depend only on which lowering ran it)."""
    before = tn.get_backend()
    try:
        tn.set_backend(backend)
        tn.manual_seed(7)
        seq = nn.Sequencer(nn.FastLSTM(x.shape[-1], hidden))
        if built is not None:
            built.append(seq)
        outs = []
        for step in range(steps):
            _step[0] = step + 1
            y = seq.forward(x)
            seq.zero_grad_parameters()
            gx = seq.backward(x, gy)
            outs.append([y.copy(), gx.copy()] + [p.grad.copy() for p in seq.parameters()])
        return outs
    finally:
        tn.set_backend(before)


def _same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a, b))


@needs_numba
@pytest.mark.parametrize("background_setting", ["1", "0"])  # ("0": numba's, not auto's)
def test_auto_asks_for_kernels_at_the_start_call_and_runs_them_from_the_switch_call(
    monkeypatch, background_setting
):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    monkeypatch.setenv("TAPERNN_AUTO_CALLS", "3,4")
    rng = np.random.default_rng(2)
    x, gy = rng.standard_normal((3, 2, 3)), rng.standard_normal((3, 2, 4))
    ref = _train("numpy", 5, 4, x, gy)
    monkeypatch.setenv("TAPERNN_NUMBA_SWITCH_CALL", "1")
    eager = _train("numba", 5, 4, x, gy)  # numba's kernels from call 1
    monkeypatch.delenv("TAPERNN_NUMBA_SWITCH_CALL")
    assert not any(_same(a, b) for a, b in zip(ref, eager))  # the lowerings' last bits differ
    asked = []
    request, start_numba = background.request, background.start_numba

    def asking(handle, key):
        asked.append(_step[0])
        return request(handle, key)

    def starting():
        asked.append(_step[0])
        start_numba()

    monkeypatch.setattr(background, "request", asking)
    monkeypatch.setattr(background, "start_numba", starting)
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", background_setting)
    built = []
    auto = _train("auto", 5, 4, x, gy, built)
    report = built[0].compile_report()
    assert report.backend == "numba"
    assert "numba's kernels asked for at call 3, run from call 4" in report.backend_note
    assert "compiled in the background from call 3" in report.kernel
    assert asked and min(asked) == 3  # nothing asked for (numba not even set up) before call 3
    for step in range(5):  # calls 1-3: NumPy's lowering, bit for bit; calls 4 and 5: numba's
        assert _same(auto[step], ref[step] if step < 3 else eager[step]), step
        for u, v in zip(ref[step], auto[step]):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12, err_msg=f"step {step}")
    # the same model built again in this process (its kernels compiled by now): the same bits
    again = _train("auto", 5, 4, x, gy)
    assert all(_same(a, b) for a, b in zip(auto, again))


@needs_numba
def test_auto_leaves_programs_without_a_small_loop_on_numpy(chosen):
    rng = np.random.default_rng(3)
    x, gy = rng.standard_normal((3, 2, 3)), rng.standard_normal((3, 2, 520))
    built = []
    auto = _train("auto", 2, 520, x, gy, built)  # values of 4 * 520 * 2 > 4096 elements
    report = built[0].compile_report()
    assert report.backend == "numpy" and report.compiled_kernels == 0
    assert report.backend_note.startswith("auto: NumPy, since no loop small enough")
    ref = _train("numpy", 2, 520, x, gy)
    assert all(_same(a, b) for a, b in zip(auto, ref))  # the NumPy backend's program itself
