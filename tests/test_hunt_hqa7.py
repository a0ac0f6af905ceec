"""Found by hqa7's QA hunt (each test failed before its fix)."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def _run(make, options, need_grad_input=True):
    """Output, grad_input and parameter gradients of one training call (two backwards)."""
    rng = np.random.default_rng(0)
    m = nn.Sequencer(make())
    for p in m.parameters():
        p.data[...] = rng.uniform(-0.5, 0.5, p.data.shape)
    m.set_plan_options(options)
    x = rng.standard_normal((5, 3, 3))
    g = rng.standard_normal((5, 3, 4))
    y = m.forward(x)
    dx = m.backward(x, g, need_grad_input=need_grad_input)
    return [y.copy(), None if dx is None else dx.copy()] + [p.grad.copy() for p in m.parameters()]


@pytest.mark.parametrize("need_grad_input", [True, False])
@pytest.mark.parametrize(
    "make",
    [lambda: nn.FastLSTM(3, 4), lambda: nn.LSTM(3, 4), lambda: nn.GRU(3, 4)],
    ids=["FastLSTM", "LSTM", "GRU"],
)
def test_fused_kernels_lowered_as_functions_write_a_claimed_output(make, need_grad_input):
    """PlanOptions(kernel_min_uses=1, kernel_min_size=1) (every fused group lowered to one
    function): a group whose output was the caller's array (a loop body's ys row) was given
    that array but its function was made without an `out` parameter (TypeError "takes 6
    positional arguments but 7 were given"); now the same values as the inline lowering."""
    small = tn.PlanOptions(kernel_min_uses=1, kernel_min_size=1)
    want = _run(make, None, need_grad_input)
    got = _run(make, small, need_grad_input)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
