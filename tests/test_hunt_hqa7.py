"""Found by hqa7's QA hunt (each test failed before its fix)."""

from __future__ import annotations

import dataclasses

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
        tn.PlanOptions(*([True] * (len(dataclasses.fields(tn.PlanOptions)) + 1)))
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
    with pytest.raises(tn.errors.DTypeError, match="pass the ids as an integer array"):
        m.forward(np.array([[True, False]]))
    assert m.forward(np.array([[1, 0]])).shape == (1, 2, 3)


class _GateColumnCell(nn.Cell):
    """A gate column (a strided (B, 1) view of the step's (B, width) gates) through a sigmoid
    or a negation, then scaling the input: the planner may compute it in place in the view."""

    state_names = ("h",)

    def __init__(self, negate, width):
        super().__init__(3, 1)
        self.negate = negate
        self.parameter("w", (3, width), init="uniform")
        self.parameter("u", (width, 1), init="uniform")
        self.parameter("b", (width,), init="uniform")
        self.parameter("v", (1, 3), init="uniform")

    def step(self, x, h):
        column = (x @ self.w + h @ tn.transpose(self.u) + self.b)[..., 1:2]
        scale = -column if self.negate else tn.sigmoid(column)
        return tn.tanh((x * scale) @ tn.transpose(self.v))


def _gate_column_numpy(cell, xs):
    h = np.zeros((xs.shape[1], 1))
    out = []
    for x in xs:
        column = (x @ cell.w.data + h @ cell.u.data.T + cell.b.data)[:, 1:2]
        scale = -column if cell.negate else 1 / (1 + np.exp(-column))
        h = np.tanh((x * scale) @ cell.v.data.T)
        out.append(h)
    return np.stack(out)


@pytest.mark.parametrize("bi", [False, True], ids=["Sequencer", "BiSequencer"])
@pytest.mark.parametrize("negate", [False, True], ids=["sigmoid", "neg"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_negation_in_place_in_a_strided_gate_column(negate, dtype, bi):
    """NumPy 2.4.6 on AVX-512 negates wrong into a strided out= of 8 float64 / 4 float32
    elements' step (tapernn.numpy_quirks). With PlanOptions' strided thresholds at 0 the
    planner put a gate column's sigmoid (its first line a negation) or a negation in place in
    the gates: unroll=True outputs were off by 0.07-0.2 from the second batch row on (found as
    a BiSequencer, whose two directions' gates share one GEMM result: twice the step)."""
    width = (8 if dtype == np.float64 else 4) // (2 if bi else 1)  # the column's step
    rng = np.random.default_rng(3)
    fwd, bwd = _GateColumnCell(negate, width), _GateColumnCell(negate, width)
    m = nn.BiSequencer(fwd, bwd, unroll=True) if bi else nn.Sequencer(fwd, unroll=True)
    m.set_plan_options(tn.PlanOptions(strided_min_bytes=0, strided_min_run=1))
    x = rng.standard_normal((2, 3, 3))
    if dtype == np.float32:
        m.float()
    y = np.asarray(m.forward(x.astype(dtype)))
    want = _gate_column_numpy(fwd, x)
    if bi:
        want = np.concatenate([want, _gate_column_numpy(bwd, x[::-1])[::-1]], axis=-1)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_plan_options_of_a_module_inside_the_called_one_are_not_ignored_silently():
    """set_plan_options on a Sequencer inside a Sequential, then calling the Sequential: the
    options were ignored without a word (its programs are planned as a whole with the called
    module's options). Now an ArgumentError says to set them on the module called; the same
    options as the caller's, or calling the inner module itself, still run."""
    x = np.ones((3, 2, 3))
    inner = nn.Sequencer(nn.FastLSTM(3, 4))
    model = nn.Sequential(inner, nn.Sequencer(nn.Linear(4, 2)))
    inner.set_plan_options(tn.PlanOptions(layout="feature"))
    with pytest.raises(tn.errors.ArgumentError, match=r"call set_plan_options on nn\.Sequential"):
        model.forward(x)
    assert inner.forward(x).shape == (3, 2, 4)
    model.set_plan_options(tn.PlanOptions(layout="feature"))
    assert model.forward(x).shape == (3, 2, 2)
    inner.set_plan_options(None)
    assert model.forward(x).shape == (3, 2, 2)


def _remembering_stack(unroll, inner):
    """Two remembering recurrent layers: Sequential(Sequencer(FastLSTM), Sequencer(GRU)), or
    (inner) Sequencer(Sequential(FastLSTM, GRU)); T = 4, 3, 4, 4; outputs and every
    get_grad_hidden_state."""
    rng = np.random.default_rng(4)
    a, b = nn.FastLSTM(3, 4), nn.GRU(4, 4)
    if inner:
        model = nn.Sequencer(nn.Sequential(a, b), unroll=unroll)
        model.remember("both")
    else:
        a, b = nn.Sequencer(a, unroll=unroll), nn.Sequencer(b, unroll=unroll)
        model = nn.Sequential(a, b)
        a.remember("both")
        b.remember("both")
    for p in model.parameters():
        p.data[...] = rng.uniform(-0.5, 0.5, p.data.shape)
    got = []
    for T in (4, 3, 4, 4):
        x, g = rng.standard_normal((T, 2, 3)), rng.standard_normal((T, 2, 4))
        got.append(np.array(model.forward(x)))
        model.backward(x, g)
        for m in (a, b):
            for t in range(T - 1):
                got += [s.copy() for s in m.get_grad_hidden_state(t)]
    return got


@pytest.mark.parametrize("inner", [False, True], ids=["two-sequencers", "one-sequencer"])
def test_grad_hidden_state_of_two_remembering_layers_after_the_length_changes(inner):
    """Two remembering recurrent layers, T = 4, 3, 4: get_grad_hidden_state at the third call
    raised "the state-gradient variant's inputs do not match the program's". The rolled call
    named its states after where the trace first asked for them ("0.h0" and "1.h0", or
    "state.h0" twice), the tapped variant "0.0.h0" and "1.0.h0": no name matched and the
    positional rename was ambiguous. States now bind by their module and position. Values: the
    unrolled run's."""
    for got, want in zip(_remembering_stack(None, inner), _remembering_stack(True, inner)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def _stacked_training_outputs(backend, options):
    before = tn.get_backend()
    tn.set_backend(backend)
    try:
        rng = np.random.default_rng(1)
        m = nn.Sequencer(nn.Sequential(nn.FastLSTM(8, 64), nn.FastLSTM(64, 64)))
        for p in m.parameters():
            p.data[...] = rng.uniform(-0.3, 0.3, p.data.shape)
        m.set_plan_options(options)
        out = []
        for _ in range(3):
            x = rng.standard_normal((4, 16, 8))
            out.append(np.array(m.forward(x)))
            m.backward(x, np.ones_like(out[-1]))
            out += [p.grad.copy() for p in m.parameters()]
        return out
    finally:
        tn.set_backend(before)


def test_batch_split_refuses_halves_whose_xs_the_other_half_writes(monkeypatch):
    """batch_split="on", numba, two FastLSTMs in one Sequencer (training): the forward slab
    holds the first layer's input projection at its rows' end, and the two row halves, run at
    once, overwrote each other's projection rows of earlier steps (the check looked at the
    same step only): outputs off by 0.4 from the second call on. Now such a call is not split
    (the backward's loops still are); values: the NumPy backend's."""
    from tapernn.backends import numba_available

    if not numba_available():
        pytest.skip("numba not installed")
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")  # kernels from call 1: split from call 2
    want = _stacked_training_outputs("numpy", None)
    got = _stacked_training_outputs("numba", tn.PlanOptions(batch_split="on", layout="batch"))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
