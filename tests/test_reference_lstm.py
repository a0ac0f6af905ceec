"""The benchmark's hand-written LSTM (tools/reference_lstm.py) must be right before it is a
yardstick: forward against an obvious per-step loop, gradients against central differences."""

from __future__ import annotations

import numpy as np
import pytest

from tapernn.apps.benchmark import reference as reference_lstm

B, T, D, H = 2, 3, 4, 5
ORIENTATIONS = ["batch", "feature"]


def plain_fastlstm(x, w_i, b, w_h):
    """Torch7 FastLSTM, one step at a time, nothing clever."""
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))
    h = np.zeros((x.shape[1], w_h.shape[1]))
    c = np.zeros_like(h)
    out = []
    for x_t in x:
        a = x_t @ w_i.T + b + h @ w_h.T
        i, g, f, o = np.split(a, 4, axis=1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.stack(out)


def _loss(model, x, probe):
    # a random linear functional of h: its gradient w.r.t. h is `probe`
    h, _ = model.step(x, probe)
    return float(np.sum(h * probe))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_forward_matches_plain_loop(rng, orientation):
    model = reference_lstm.ReferenceLSTM(D, H, np.float64, orientation, seed=3)
    x = rng.standard_normal((T, B, D))
    h, _ = model.step(x, np.zeros((T, B, H)))
    p = model.params
    expected = plain_fastlstm(x, p["i2g.weight"], p["i2g.bias"], p["o2g.weight"])
    np.testing.assert_allclose(h, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_gradients_match_central_differences(rng, orientation):
    model = reference_lstm.ReferenceLSTM(D, H, np.float64, orientation, seed=4)
    x = rng.standard_normal((T, B, D))
    probe = rng.standard_normal((T, B, H))
    _, grads = model.step(x, probe)
    analytic = {k: v.copy() for k, v in grads.items()}
    targets = dict(model.params, x=x)
    eps = 1e-6
    for name, array in targets.items():
        numeric = np.empty_like(array)
        for idx in np.ndindex(array.shape):
            saved = array[idx]
            array[idx] = saved + eps
            up = _loss(model, x, probe)
            array[idx] = saved - eps
            down = _loss(model, x, probe)
            array[idx] = saved
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def test_float32_agrees_with_float64(rng):
    x = rng.standard_normal((T, B, D))
    probe = rng.standard_normal((T, B, H))
    results = {}
    for dtype in (np.float32, np.float64):
        h, grads = reference_lstm.ReferenceLSTM(D, H, dtype, seed=5).step(x, probe)
        results[dtype] = (h.copy(), {k: v.copy() for k, v in grads.items()})
    (h32, g32), (h64, g64) = results[np.float32], results[np.float64]
    assert h32.dtype == np.float32
    np.testing.assert_allclose(h32, h64, rtol=1e-4, atol=1e-5)
    for name in g64:
        np.testing.assert_allclose(g32[name], g64[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_buffers_are_reused_across_calls(rng):
    model = reference_lstm.ReferenceLSTM(D, H, np.float32)
    x = rng.standard_normal((T, B, D))
    h1, _ = model.step(x, np.ones((T, B, H)))
    before = model.workspace_bytes()
    h2, _ = model.step(x, np.ones((T, B, H)))
    assert h1 is h2 or np.shares_memory(h1, h2)
    assert model.workspace_bytes() == before
    assert before >= reference_lstm.theoretical_min_bptt_bytes(B, T, D, H, np.float32)


def test_theoretical_minimum_formula():
    # saved activations bound the peak when backward starts, returned gradients when it ends
    assert reference_lstm.theoretical_min_bptt_bytes(32, 50, 128, 128, np.float32) == (
        50 * 32 * 5 * 128 * 4
    )
    P = 4 * 5 * (5 + 5) + 4 * 5
    assert reference_lstm.theoretical_min_bptt_bytes(1, 5, 5, 5, np.float64) == (P + 25) * 8
    assert reference_lstm.theoretical_min_bptt_bytes(1, 5, 5, 5, np.float64, n_params=50) == (
        5 * 5 * 5 * 8
    )
    model = reference_lstm.ReferenceLSTM(5, 5, np.float64)
    model.step(np.ones((5, 1, 5)), np.ones((5, 1, 5)))
    assert sum(g.nbytes for name, g in model.grads.items() if name != "x") == P * 8


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_without_the_input_gradient_the_weight_gradients_are_unchanged(rng, orientation):
    """bench.py --no-grad-input: the reference skips only its dX GEMM."""
    x = rng.standard_normal((T, B, D))
    probe = rng.standard_normal((T, B, H))
    full = reference_lstm.ReferenceLSTM(D, H, np.float64, orientation, seed=6)
    h_full, grads = full.step(x, probe)
    expected = {k: v.copy() for k, v in grads.items()}
    lean = reference_lstm.ReferenceLSTM(D, H, np.float64, orientation, seed=6)
    h_lean, lean_grads = lean.step(x, probe, need_grad_input=False)
    np.testing.assert_array_equal(h_lean, h_full)
    assert "x" not in lean_grads and "x" in expected
    for name in full.params:
        np.testing.assert_allclose(lean_grads[name], expected[name], rtol=1e-13, atol=1e-13)
