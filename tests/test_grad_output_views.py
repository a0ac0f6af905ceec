"""A gradient that is a view of the Sequencer's own `output` (loss 0.5 * sum(y**2), or its rows
reversed or columns flipped). `output` is a view of the forward's per-call slab, which the
backward's loop may write (donated): the input gradient and every parameter gradient equal those
of the same backward given a copy, call after call (float64, 1e-10). (Checked: these views never
reach a loop runner as inputs lying in the slab it writes -- sabotaging writable_over_xs to
answer "writable" leaves this test passing -- so its memo's key without offsets is not what
keeps them right.)"""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_available

VIEWS = {
    "output": lambda y: y,
    "rows reversed": lambda y: y[::-1],
    "batch reversed": lambda y: y[:, ::-1],
    "features reversed": lambda y: y[..., ::-1],
}

CASES = [
    ("numpy", cell, shape)
    for cell in ("FastLSTM", "LSTM", "GRU")
    for shape in [(4, 3, 5), (20, 8, 16)]
]
CASES += [("numba", "FastLSTM", (20, 8, 16)), ("numba", "GRU", (6, 2, 8))]


@pytest.mark.parametrize("backend,cell,shape", CASES)
def test_gradient_given_as_a_view_of_the_output(backend, cell, shape, monkeypatch):
    if backend == "numba" and not numba_available():
        pytest.skip("numba is not installed")
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    T, B, H = shape
    tn.manual_seed(0)
    seq = nn.Sequencer(getattr(nn, cell)(H, H))
    seq.set_plan_options(tn.PlanOptions(backend=backend))
    x = np.random.default_rng(1).standard_normal((T, B, H))
    for _ in range(3):  # (steady: the slab donated, the runners' answers remembered)
        y = seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, np.ones_like(y))
    for name, view in list(VIEWS.items()) * 2:  # (each layout twice: once remembered)
        seq.zero_grad_parameters()
        g = view(seq.forward(x)).copy()
        want_in = seq.backward(x, g).copy()
        want = [p.grad.copy() for p in seq.parameters()]
        seq.zero_grad_parameters()
        got_in = seq.backward(x, view(seq.forward(x)))
        np.testing.assert_allclose(got_in, want_in, rtol=1e-10, atol=1e-10, err_msg=name)
        for p, w in zip(seq.parameters(), want):
            np.testing.assert_allclose(p.grad, w, rtol=1e-10, atol=1e-10, err_msg=name)
