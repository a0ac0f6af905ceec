"""The steady backward's copies for a lazy get_grad_hidden_state (nn.steady_source._plain_copies:
spelled out where every argument and the output gradient is copied whole): the state gradients
it later computes are those of the backward's own input, output gradient and parameters --
whatever the caller changes in place afterwards -- as a model that never changed them computes
them on the general path; a dropout mask (bound per call) is the call's own."""

import copy

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

T, B, D, H = 4, 2, 3, 5


def data(k):
    r = np.random.default_rng(k)
    return r.standard_normal((T, B, D)), r.standard_normal((T, B, H))


def grad_hidden(seq, ts=(0, 2)):
    cell = seq.module if not isinstance(seq.module, nn.Sequential) else seq.module[0]
    return [np.array(g) for t in ts for g in cell.get_grad_hidden_state(t)]


@pytest.mark.parametrize("cell", ["FastLSTM", "GRU"])
def test_state_grads_see_the_backwards_values_after_in_place_changes(backend, cell):
    tn.manual_seed(5)
    seq = nn.Sequencer(getattr(nn, cell)(D, H))
    x0, g0 = data(0)
    seq.forward(x0)
    seq.backward(x0, g0)
    fresh = copy.deepcopy(seq)
    x, g = data(1)
    seq.forward(x)
    seq.backward(x, g)  # the steady path
    assert "watched = ()" in seq._runtime.steady.backward.source  # (the spelled-out copies)
    want_x, want_g = x.copy(), g.copy()
    x[...] = 7.0  # the caller's buffers refilled, the parameters updated, in place
    g[...] = -3.0
    seq.update_parameters(0.5)
    fresh.forward(want_x)
    fresh.backward(want_x, want_g)
    for u, v in zip(grad_hidden(seq), grad_hidden(fresh), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)


def test_a_dropout_masks_state_grads_are_its_calls(backend):
    tn.manual_seed(6)
    seq = nn.Sequencer(nn.Sequential(nn.FastLSTM(D, H), nn.Dropout(0.5)))
    x, g = data(2)
    seq.forward(x)
    seq.backward(x, g)
    start = copy.deepcopy(seq)
    tn.manual_seed(60)
    seq.forward(x)
    seq.backward(x, g)  # steady: the mask an argument bound per call
    assert "watched = ()" in seq._runtime.steady.backward.source
    got = grad_hidden(seq)
    tn.manual_seed(61)
    seq.forward(x)  # a new mask drawn: the last backward's taps are dropped, not recomputed
    ref = copy.deepcopy(start)  # (a copy plans its own steady path: its first call is general)
    tn.manual_seed(60)
    ref.forward(x)  # the general path with the same draws
    ref.backward(x, g)
    for u, v in zip(got, grad_hidden(ref), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)


def test_without_the_input_gradient_the_general_copies(backend):
    tn.manual_seed(7)
    seq = nn.Sequencer(nn.FastLSTM(D, H))
    fresh = copy.deepcopy(seq)
    x, g = data(3)
    for _ in range(2):
        seq.forward(x)
        seq.backward(x, g, need_grad_input=False)
    want_x, want_g = x.copy(), g.copy()
    x[...] = 1.0
    g[...] = 2.0
    fresh.forward(want_x)
    fresh.backward(want_x, want_g, need_grad_input=False)
    for u, v in zip(grad_hidden(seq), grad_hidden(fresh), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)


def test_a_rebound_parameter_is_the_one_copied(backend):
    tn.manual_seed(8)
    seq = nn.Sequencer(nn.FastLSTM(D, H))
    x, g = data(4)
    for _ in range(2):
        seq.forward(x)
        seq.backward(x, g)
    w = seq.module.o2g.weight  # rebound (a new plan), then steady again with the new array
    w.data = w.data * 0.5
    fresh = copy.deepcopy(seq)
    for _ in range(2):
        seq.forward(x)
        seq.backward(x, g)
    assert "watched = ()" in seq._runtime.steady.backward.source
    w.data *= 3.0  # in place, after the backward: the copy holds the backward's values
    fresh.forward(x)
    fresh.backward(x, g)
    for u, v in zip(grad_hidden(seq), grad_hidden(fresh), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)
