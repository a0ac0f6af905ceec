"""QA round hqa15: what the hunt found on the numba fast paths (packed step GEMMs, step loops,
owned threads) and in the stateful API, each checked against NumPy equations."""

from __future__ import annotations

import numpy as np
import pytest
from cell_reference import fastlstm_step, gru_step

import tapernn as tn
from tapernn import nn

KINDS = {"FastLSTM": (nn.FastLSTM, fastlstm_step, 2), "GRU": (nn.GRU, gru_step, 1)}


def _equations(step, params, xs, state):
    outs = []
    for x in xs:
        state = step(params, x, *state)
        outs.append(state[0])
    return np.stack(outs), state


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("to", [np.float32, np.float64])
@pytest.mark.parametrize("how", ["remember", "set_initial_state"])
def test_astype_converts_the_state_a_module_continues_from(backend, kind, to, how):
    """Torch7's :float() / :double() convert a module's state with its weights. Before: the
    remembered (or set_initial_state) state kept its dtype, so on the numba backend the packed
    step GEMM (H = 128) raised "packed GEMM: expected 16-column float64 panels, got float32"
    for a valid call, and the NumPy backend ran the first step in mixed precision (other bits
    than the model built in that dtype)."""
    make, step, n_states = KINDS[kind]
    frm = np.float64 if to == np.float32 else np.float32
    D = H = 128
    B = 16
    rng = np.random.default_rng(5)
    tn.manual_seed(3)
    seq = nn.Sequencer(make(D, H)).astype(frm)
    x1 = rng.standard_normal((3, B, D))
    x2 = rng.standard_normal((2, B, D))
    start = tuple(0.5 * rng.standard_normal((B, H)).astype(frm) for _ in range(n_states))
    p = {k: v.data.astype(np.float64) for k, v in seq.get(0).named_parameters().items()}
    if how == "remember":
        seq.remember("both")
        seq.forward(x1.astype(frm))
        start = seq.get_hidden_state(-1)
    else:
        seq.set_initial_state(start)
    seq.astype(to)
    twin = nn.Sequencer(make(D, H)).astype(to)  # built in `to`, started from the state cast
    twin.load_state_dict(seq.state_dict()).set_initial_state(tuple(s.astype(to) for s in start))
    start = tuple(s.astype(np.float64) for s in start)
    tol = 1e-5 if to == np.float32 else 1e-6  # (the weights were rounded to float32)
    for call in range(3):  # the numba backend's programs: NumPy lowering, then its kernels
        want, end = _equations(step, p, x2, start)
        y = seq.forward(x2.astype(to))
        assert y.dtype == to
        np.testing.assert_allclose(y, want, atol=tol, rtol=0)
        if call == 0:
            assert np.array_equal(y, twin.forward(x2.astype(to)))  # the same bits
        gi = seq.backward(x2.astype(to), np.ones_like(y))
        assert gi.dtype == to and all(q.grad.dtype == to for q in seq.parameters())
        assert all(s.dtype == to for s in seq.get_hidden_state(-1))
        start = end if how == "remember" else start


def _masked_run(step, p, xs, n_states, how):
    """The equations over xs (T, B, D) with Torch7's masking: rows whose (real) input is all
    zeros output zeros; `cell` (cell.mask_zero()) also resets their state, `wrap`
    (nn.MaskZero(cell)) masks the output only."""
    state = tuple(np.zeros((xs.shape[1], p["H"]), xs.dtype) for _ in range(n_states))
    outs = []
    for x in xs:
        keep = (np.abs(x.real).sum(-1) != 0)[:, None]
        new = step(p, x, *state)
        if how == "cell":
            new = tuple(np.where(keep, s, 0) for s in new)
        outs.append(np.where(keep, new[0], 0))
        state = new
    return np.stack(outs)


@pytest.mark.parametrize("kind, how", [("FastLSTM", "cell"), ("GRU", "cell"), ("FastLSTM", "wrap")])
def test_mask_zero_at_step_loop_sizes(backend, kind, how):
    """Masked rows at the sizes where the numba backend packs the step GEMMs, splits the batch
    (B = 17: 9 | 8) and runs step loops: outputs against the equations, every gradient against
    complex-step directional derivatives of them (no shared code). The mask's row select is not
    translated by the step loop (that half runs its Python loop): this holds the answer fixed
    for when it is."""
    make, step, n_states = KINDS[kind]
    T, B, D, H = 4, 17, 64, 128
    rng = np.random.default_rng(11)
    tn.manual_seed(2)
    cell = make(D, H)
    seq = nn.Sequencer(cell.mask_zero() if how == "cell" else nn.MaskZero(cell, 1))
    params = dict(cell.named_parameters())
    p = {k: v.data.copy() for k, v in params.items()}
    p["H"] = H
    for call in range(2):
        xs = rng.standard_normal((T, B, D))
        xs[:2, 0] = 0  # left padding
        xs[1, 5] = 0  # a zero step inside a row: state reset (cell) or output zeroed (wrap)
        xs[3, [2, 16]] = 0
        xs[:, 9] = 0  # a row of padding only (the second half's first row)
        seed = rng.standard_normal((T, B, H))
        y = seq.forward(xs)
        np.testing.assert_allclose(y, _masked_run(step, p, xs, n_states, how), atol=1e-12)
        assert np.all(y[xs.sum(-1) == 0] == 0)
        seq.zero_grad_parameters()
        gx = seq.backward(xs, seed)
        dirs = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        vx = rng.standard_normal(xs.shape) * (np.abs(xs).sum(-1, keepdims=True) != 0)
        eps = 1e-30
        q = dict(p, **{k: p[k] + 1j * eps * dirs[k] for k in dirs})
        out = _masked_run(step, q, xs + 1j * eps * vx, n_states, how)
        want = np.sum(seed * out).imag / eps
        got = np.sum(gx * vx) + sum(np.sum(params[k].grad * dirs[k]) for k in dirs)
        assert abs(got - want) <= 1e-9 * (1 + abs(want)), (call, got, want)
        if how == "cell":  # (wrapped, a masked step's input still feeds the state: Torch7's
            assert np.all(gx[xs.sum(-1) == 0] == 0)  # MaskZero masks gradOutput, not gradInput)
