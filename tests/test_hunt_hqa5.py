"""Found by hqa5's QA hunt (each test failed before its fix)."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def _empty_cases():
    yield "lstm", nn.Sequencer(nn.LSTM(3, 4)), np.zeros((5, 0, 3)), (5, 0, 4)
    yield "linear", nn.Sequencer(nn.Linear(3, 4)), np.zeros((5, 0, 3)), (5, 0, 4)
    yield (
        "stack",
        nn.Sequencer(nn.Sequential(nn.FastLSTM(3, 4), nn.NormStabilizer(0.1), nn.GRU(4, 4))),
        np.zeros((5, 0, 3)),
        (5, 0, 4),
    )
    yield "list", nn.Sequencer(nn.GRU(3, 4)), [np.zeros((0, 3))] * 4, (4, 0, 4)
    yield "bi", nn.BiSequencer(nn.GRU(3, 4)), np.zeros((5, 0, 3)), (5, 0, 8)
    yield "repeater", nn.Repeater(nn.LSTM(3, 4), 3), np.zeros((0, 3)), (3, 0, 4)


@pytest.mark.parametrize("case", list(_empty_cases()), ids=lambda c: c[0])
def test_an_empty_batch_runs_as_unrolled(case, backend):
    # (before: the rolled loop raised "reshape: cannot reshape (0,) into (-1, 0, 4)" or
    # "scan: internal error, a ys view of the slab is a copy"; unroll=True and the step-wise
    # modules already returned empty outputs)
    _, m, x, shape = case
    for _ in range(2):  # (the second call: the steady path)
        y = m.forward(x)
        ys = y if isinstance(y, list) else list(y)
        assert np.stack(ys).shape == shape
        m.zero_grad_parameters()
        g = [np.ones_like(v) for v in y] if isinstance(y, list) else np.ones_like(y)
        gx = m.backward(x, g)
        assert np.shape(gx if not isinstance(gx, list) else np.stack(gx)) == np.shape(
            x if not isinstance(x, list) else np.stack(x)
        )
        assert all(not np.any(p.grad) for p in m.parameters())


def test_lengths_of_an_empty_batch():
    # (before: lengths.min() of no rows raised a bare ValueError)
    m = nn.Sequencer(nn.GRU(3, 4))
    assert m.forward(np.zeros((4, 0, 3)), lengths=np.zeros(0, int)).shape == (4, 0, 4)


@pytest.mark.parametrize("cls", [nn.BiSequencer, nn.BiSequencerLM])
def test_bidirectional_lengths_is_refused_by_name(cls):
    # (before: a bare TypeError "unexpected keyword argument 'lengths'")
    m = cls(nn.GRU(3, 4))
    with pytest.raises(tn.ArgumentError, match="takes no lengths=.*mask_zero"):
        m.forward(np.zeros((5, 2, 3)), lengths=[2, 3])
    assert m.forward(np.zeros((5, 2, 3))).shape == (5, 2, 8)


def test_bisequencer_over_mask_zero_cells_runs_each_padded_row_as_alone():
    """What the lengths= refusal recommends: zero padding and mask_zero() cells."""
    import copy

    rng = np.random.default_rng(0)
    tn.manual_seed(0)
    bi = nn.BiSequencer(nn.GRU(3, 4).mask_zero(), nn.LSTM(3, 4).mask_zero())
    x = rng.standard_normal((5, 2, 3))
    x[3:, 0] = 0.0  # row 0 has length 3
    y = bi.forward(x)
    alone = copy.deepcopy(bi)
    np.testing.assert_allclose(y[:3, :1], alone.forward(x[:3, :1]), rtol=1e-12, atol=1e-14)
    assert not np.any(y[3:, 0])
    np.testing.assert_allclose(y[:, 1:], alone.forward(x[:, 1:]), rtol=1e-12, atol=1e-14)


def _twin_sharing_parameters(cell):
    """Another module holding the same Parameter objects (the oracle: runs independently)."""
    import copy

    twin = copy.deepcopy(cell)
    for name, p in cell.named_parameters().items():
        *path, leaf = name.split(".")
        owner = twin
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, leaf, p)
    return twin


@pytest.mark.parametrize("make", [lambda: nn.GRU(4, 4), lambda: nn.FastLSTM(4, 4)])
@pytest.mark.parametrize("unroll", [None, True])
def test_one_recurrent_module_in_two_sequencers_starts_each_from_zeros(make, unroll, backend):
    # (before: the second Sequencer continued from the state the first left in the same call,
    # though a Sequencer that does not remember forgets before each forward, as Torch7's)
    rng = np.random.default_rng(0)
    tn.manual_seed(0)
    cell = make()
    twin = _twin_sharing_parameters(cell)
    x, g = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
    shared = nn.Sequential(nn.Sequencer(cell, unroll=unroll), nn.Sequencer(cell, unroll=unroll))
    oracle = nn.Sequential(nn.Sequencer(cell, unroll=unroll), nn.Sequencer(twin, unroll=unroll))
    assert len(oracle.parameters()) == len(cell.parameters())
    for _ in range(2):  # (the second call: the steady path)
        got, want = [], []
        for m, out in ((shared, got), (oracle, want)):
            out.append(np.array(m.forward(x)))
            m.zero_grad_parameters()
            out.append(np.array(m.backward(x, g)))
            out += [p.grad.copy() for p in m.parameters()]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_repeated_sequencer_forgets_before_each_repeat():
    # (before: Repeater(Sequencer(GRU)) carried the state from one repeat into the next)
    rng = np.random.default_rng(1)
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.GRU(4, 4))
    x = rng.standard_normal((3, 2, 4))
    once = np.array(seq.forward(x))
    for unroll in (None, True):
        rep = nn.Repeater(seq, 3)
        rep.unroll = unroll
        for y in rep.forward(x):
            np.testing.assert_allclose(y, once, rtol=1e-12, atol=1e-14)


def test_a_remembering_second_sequencer_continues():
    """With remember, the second use continues from the first's final state (no forget), as
    Torch7: the same as one remembering Sequencer called twice."""
    import copy

    rng = np.random.default_rng(2)
    tn.manual_seed(0)
    cell = nn.GRU(4, 4)
    ref = nn.Sequencer(copy.deepcopy(cell)).remember()
    x = rng.standard_normal((3, 2, 4))
    first = ref.forward(x)
    both = nn.Sequential(nn.Sequencer(cell), nn.Sequencer(cell).remember())
    np.testing.assert_allclose(both.forward(x), ref.forward(first), rtol=1e-12, atol=1e-14)


def test_a_shared_module_with_an_initial_state_is_refused_by_name():
    cell = nn.GRU(4, 4)
    cell.set_initial_state(np.ones((2, 4)))
    m = nn.Sequential(nn.Sequencer(cell), nn.Sequencer(cell))
    with pytest.raises(tn.StateError, match="two places.*own module"):
        m.forward(np.zeros((3, 2, 4)))


@pytest.mark.parametrize("cls", [nn.BiSequencer, nn.BiSequencerLM])
def test_one_recurrent_module_for_both_directions_is_refused(cls):
    # (before: BiSequencer(g, g) ran, the backward pass continuing from the forward pass's
    # final state: a silent wrong answer)
    g = nn.GRU(4, 4)
    with pytest.raises(tn.ArgumentError, match="share a recurrent module.*same Parameter"):
        cls(g, g)
    with pytest.raises(tn.ArgumentError):
        cls(nn.Sequential(nn.Linear(4, 4), g), g)
    lin = nn.Linear(4, 4)  # a shared non-recurrent module is fine
    cls(nn.Sequential(lin, nn.GRU(4, 4)), nn.Sequential(lin, nn.GRU(4, 4)))


def test_tied_directions_through_a_twin_run_each_direction_alone():
    """The refusal's recommendation: bwd a twin holding fwd's Parameter objects."""
    rng = np.random.default_rng(3)
    tn.manual_seed(0)
    g = nn.GRU(4, 4)
    x = rng.standard_normal((3, 2, 4))
    y = nn.BiSequencer(g, _twin_sharing_parameters(g)).forward(x)
    seq = nn.Sequencer(g)
    want = np.concatenate([seq.forward(x), seq.forward(x[::-1].copy())[::-1]], axis=-1)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("unroll", [None, True])
def test_one_recurrent_module_in_two_repeaters_starts_each_from_zeros(unroll):
    # (before: the second Repeater continued from the first's final state; Torch7's Repeater
    # forgets at each forward)
    rng = np.random.default_rng(4)
    tn.manual_seed(0)
    g = nn.GRU(4, 4)
    twin = _twin_sharing_parameters(g)
    x = rng.standard_normal((2, 4))

    def model(a, b):
        r1, r2 = nn.Repeater(a, 2), nn.Repeater(b, 2)
        r1.unroll = r2.unroll = unroll
        return nn.Sequential(r1, nn.SelectTable(-1), r2)

    got, want = model(g, g).forward(x), model(g, twin).forward(x)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", [nn.BiSequencer, nn.BiSequencerLM])
@pytest.mark.parametrize("unroll", [None, True])
def test_a_bidirectional_direction_run_elsewhere_first_starts_from_zeros(cls, unroll):
    # (before: a BiSequencer whose fwd module a Sequencer had already run in the same call
    # continued from that Sequencer's final state)
    rng = np.random.default_rng(5)
    tn.manual_seed(0)
    g, other = nn.GRU(4, 4), nn.GRU(4, 4)
    twin = _twin_sharing_parameters(g)
    x = rng.standard_normal((3, 2, 4))

    def model(fwd):
        bi = cls(fwd, other, merge=nn.CAddTable())
        bi.unroll = unroll
        return nn.Sequential(nn.Sequencer(g), bi)

    np.testing.assert_allclose(model(g).forward(x), model(twin).forward(x), rtol=1e-12, atol=1e-14)
