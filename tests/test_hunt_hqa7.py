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


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fast": True}, "no field 'fast'; its fields are regions, "),
        ({"regions": True, "tap_room": 0}, "no field 'tap_room'.*tap_room_min_bytes"),
    ],
)
def test_plan_options_refuse_an_unknown_field_by_name(kwargs, match):
    """PlanOptions(fast=True) raised Python's bare TypeError (not a TapernnError) naming no
    field there is; now an ArgumentTypeError (still a TypeError) listing the fields."""
    with pytest.raises(tn.errors.ArgumentTypeError, match=match):
        tn.PlanOptions(**kwargs)
    with pytest.raises(tn.errors.ArgumentTypeError, match="too many arguments"):
        tn.PlanOptions(*([True] * 16))
    assert tn.PlanOptions(regions=False, backend="numpy").regions is False


def test_plan_options_refuse_an_unknown_backend_when_made():
    """PlanOptions(backend="nmba") was accepted and failed only at the model's first call."""
    with pytest.raises(tn.errors.ArgumentError, match="'nmba'"):
        tn.PlanOptions(backend="nmba")
    for name in ("", "numpy", "numba", "auto"):
        assert tn.PlanOptions(backend=name).backend == name


def test_lookup_table_given_bool_ids_says_to_pass_integers():
    """Bool ids reached the layer as float64 ("expects integer ids, got float64"): the message
    now says why and what to pass."""
    m = nn.LookupTable(5, 3)
    with pytest.raises(tn.errors.ShapeError, match="pass the ids as an integer array"):
        m.forward(np.array([[True, False]]))
    assert m.forward(np.array([[1, 0]])).shape == (1, 2, 3)
