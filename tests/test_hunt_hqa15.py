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
