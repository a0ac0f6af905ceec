"""PROTOTYPE (branch hauto): "auto" with two plans ($TAPERNN_AUTO_PLANS, nn.auto_plans): NumPy's
plan until the switch call, numba's after -- the same numbers as the NumPy backend's at every
step (float64, 1e-12), and the switch made where the call counts say. Cost: one numba training
pair compiled (~seconds cold)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import backends, nn
from tapernn.backends import numba_missing

pytestmark = pytest.mark.skipif(bool(numba_missing()), reason="numba is not usable here")

T, B, H = 3, 8, 144  # (a step's gates: B * 4H = 4608 elements, more than a loop kernel takes)


def model(backend: str):
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H))
    if backend:
        seq.set_plan_options(tn.PlanOptions(backend=backend))
    return seq


def test_two_plans_switch_at_the_call_counts_with_numpy_numbers(monkeypatch):
    monkeypatch.setenv("TAPERNN_AUTO_PLANS", "2,3")
    monkeypatch.setattr(backends, "_chosen", "auto")  # (restored after the test)
    two, ref = model(""), model("numpy")
    rng = np.random.default_rng(0)
    ran = []
    for _ in range(4):
        x, g = rng.standard_normal((2, T, B, H))
        for seq in (two, ref):
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, g)
        ran.append(two._runtime.last.compile_training().forward.program.backend)
        np.testing.assert_allclose(two.output, ref.output, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(two.grad_input, ref.grad_input, rtol=1e-12, atol=1e-12)
        for p, q in zip(two.parameters(), ref.parameters()):
            np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12)
    assert ran == ["numpy", "numpy", "numba", "numba"]
