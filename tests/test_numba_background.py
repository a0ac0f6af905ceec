"""numba kernels compiled in the background (tapernn/backends/background.py): a program's first
calls run the NumPy lowering, later ones the kernels the worker swapped in, and every call agrees
with the reference interpreter and the NumPy backend to 1e-12 in float64 whichever ran."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_backends import _arrays, every_op

import tapernn as tn
from tapernn import nn
from tapernn.backends import background, numba_available, numba_backend
from tapernn.interpret import interpret

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def later(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")


def _slots(compiled):
    return {k: v for k, v in compiled.program.fn.__kwdefaults__.items() if k.startswith("nks")}


def test_first_call_runs_numpy_then_the_worker_swaps_the_kernel_in(later):
    x = _arrays(np.float64, seed=5)
    g = tn.trace(every_op, *x)
    c = tn.compile(g, backend="numba")
    assert c.report.backend == "numba" and c.report.compiled_kernels == 1
    assert _slots(c) and all(isinstance(v, background.Site) for v in _slots(c).values())
    ref = interpret(g, *x)[0]
    npy = tn.compile(g, backend="numpy")(*x)
    first = c(*x)
    np.testing.assert_array_equal(first, npy)  # the same NumPy lowering ran
    assert all(isinstance(v, background.Site) for v in _slots(c).values())
    c(*x)  # the second call has the worker compile the kernel
    assert background.wait(timeout=120)
    kernels = list(_slots(c).values())
    assert kernels and not any(isinstance(v, background.Site) for v in kernels)
    later_out = c(*x)
    np.testing.assert_allclose(later_out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(first, ref, rtol=1e-12, atol=1e-12)
    sync = tn.compile(g, backend="numba")  # compiled already: swapped at its first call
    np.testing.assert_array_equal(sync(*x), later_out)
    assert not any(isinstance(v, background.Site) for v in _slots(sync).values())


def test_a_kernel_that_fails_in_the_background_leaves_its_groups_on_numpy(later, monkeypatch):
    def broken(source):
        raise RuntimeError("simulated compile failure")
    monkeypatch.setattr(numba_backend, "_load", broken)
    monkeypatch.setattr(numba_backend, "_kernels", {})
    x = _arrays(np.float64, seed=6)
    g = tn.trace(every_op, *x)
    c = tn.compile(g, backend="numba")
    for _ in range(2):
        c(*x)
    assert background.wait(timeout=60)
    assert all(isinstance(v, background.Site) for v in _slots(c).values())
    assert "simulated compile failure" in next(iter(numba_backend._kernels.values())).error
    np.testing.assert_allclose(c(*x), interpret(g, *x)[0], rtol=1e-12, atol=1e-12)


def _train(steps, x, gy):
    seq = nn.Sequencer(nn.FastLSTM(3, 4))
    outs = []
    for _ in range(steps):
        y = seq.forward(x)
        seq.zero_grad_parameters()
        gx = seq.backward(x, gy)
        outs.append([y.copy(), gx.copy()] + [p.grad.copy() for p in seq.parameters()])
        if len(outs) == 2:
            assert background.wait(timeout=120)
    return outs


def test_training_steps_agree_while_kernels_arrive(later, monkeypatch):
    rng = np.random.default_rng(0)
    x, gy = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 4))
    before = tn.get_backend()
    try:
        tn.set_backend("numpy")
        tn.manual_seed(7)
        ref = _train(4, x, gy)
        tn.set_backend("numba")
        tn.manual_seed(7)
        got = _train(4, x, gy)
    finally:
        tn.set_backend(before)
    for step, (a, b) in enumerate(zip(ref, got)):
        for u, v in zip(a, b):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12, err_msg=f"step {step}")


_CHILD = """
import sys, numpy as np, tapernn as tn
from tapernn.backends import background
x = np.linspace(-3, 3, 12).reshape(3, 4)
c = tn.compile(tn.trace(lambda a: tn.tanh(a) * tn.sigmoid(a) + a, x), backend="numba")
c(x)
print("numba" in sys.modules)
c(x)
assert background.wait(120)
kinds = {type(v).__name__ for k, v in c.program.fn.__kwdefaults__.items() if k.startswith("nks")}
assert abs(c(x) - (np.tanh(x) / (1 + np.exp(-x)) + x)).max() < 1e-12
print("numba" in sys.modules, sorted(kinds))
"""


def test_a_program_run_once_never_imports_numba(tmp_path):
    env = dict(os.environ, TAPERNN_KERNEL_CACHE=str(tmp_path), PYTHONPATH=str(ROOT),
               TAPERNN_NUMBA_BACKGROUND="1")
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[0] == "False"
    assert out[1] == "True ['CPUDispatcher']"
