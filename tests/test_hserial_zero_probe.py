"""packing._zeros' first-element probe (issue 19, branch hserial): a `.grad` left from the step
before -- the steady forward's scratch_into after a backward -- is answered by its first
element, without the head's reduce (a counter: packing._nonzero not called); the answer is
`not a.any()`'s (tests/test_weight_scratch.py checks every position and value), and a lent
`.grad` still takes the forward's transposed weight only when it holds zeros: gradients
accumulate over steps without zero_grad_parameters (Torch7) and are one step's after it."""

import numpy as np
import pytest

from tapernn import PlanOptions, nn
from tapernn.nn import packing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("first", [1.0, np.nan, -np.inf])
def test_a_nonzero_first_element_answers_without_a_pass(monkeypatch, dtype, first):
    calls = []
    real = packing._nonzero
    monkeypatch.setattr(packing, "_nonzero", lambda flat: calls.append(flat.size) or real(flat))
    a = np.zeros((64, 128), dtype)
    a[0, 0] = first
    assert not packing._zeros(a)
    assert calls == []
    a[0, 0] = -0.0  # (a zero: the head and the rest are read)
    assert packing._zeros(a)
    assert calls == [packing.HEAD, a.size - packing.HEAD]
    assert packing._zeros(np.zeros((0, 4), dtype))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_steady_forward_skips_the_pass_over_a_used_grad(monkeypatch, backend):
    """Four loop steps of a FastLSTM Sequencer whose forward lends the recurrent weight's `.grad`
    (tests/test_weight_scratch.py's shapes; the steady path from the third): every forward
    after a backward sees the used `.grad` at its first element (no _nonzero call), one after
    zero_grad_parameters reads it whole; gradients accumulate (Torch7) without
    zero_grad_parameters (k times one step's, 1e-12) and are one step's after it."""
    T, B, H = 4, 8, 128
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    seq = nn.Sequencer(nn.FastLSTM(H, H)).set_plan_options(
        PlanOptions(backend=backend, layout="batch")
    )
    seq.forward(x)
    seq.zero_grad_parameters()
    seq.backward(x, g)
    once = [p.grad.copy() for p in seq.parameters()]
    calls = []
    real = packing._nonzero
    monkeypatch.setattr(packing, "_nonzero", lambda flat: calls.append(flat.size) or real(flat))
    for k in range(2, 5):
        calls.clear()
        seq.forward(x)
        assert calls == []
        seq.backward(x, g)  # (accumulates)
        for p, o in zip(seq.parameters(), once):
            np.testing.assert_allclose(p.grad, k * o, rtol=1e-12, atol=1e-12)
    seq.zero_grad_parameters()
    calls.clear()
    seq.forward(x)
    assert packing.HEAD in calls  # (zeros: the head's reduce, then the rest)
    seq.backward(x, g)
    for p, o in zip(seq.parameters(), once):
        np.testing.assert_array_equal(p.grad, o)
