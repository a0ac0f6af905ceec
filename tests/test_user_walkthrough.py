"""Defects found by using tapernn as its users do (README, docs, API.md): each test reproduces one
and checks the fixed behaviour against hand-written NumPy or a run without the feature."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

R = np.random.default_rng(7)


def _sig(a):
    return 1 / (1 + np.exp(-a))


def test_recurrent_start_module_is_registered_once_as_start():
    start = nn.Linear(4, 4)
    rnn = nn.Recurrent(start, nn.Linear(3, 4), nn.Linear(4, 4))
    names = list(rnn.named_parameters())
    assert names == [
        "start.weight",
        "start.bias",
        "input.weight",
        "input.bias",
        "feedback.weight",
        "feedback.bias",
    ]
    assert list(rnn.state_dict()) == names
    assert [n for n, _ in rnn.named_children()] == [
        "start",
        "input",
        "feedback",
        "transfer",
        "merge",
    ]
    assert sum(m is start for m in rnn.modules()) == 1
    assert rnn.start_module is start
    # the numbers: h0 = σ(start(input(x0))), h1 = σ(input(x1) + feedback(h0))
    p = {k: v.data for k, v in rnn.named_parameters().items()}
    x = R.standard_normal((2, 2, 3))
    seq = nn.Sequencer(rnn)
    y = seq.forward(x)
    a0 = x[0] @ p["input.weight"].T + p["input.bias"]
    h0 = _sig(a0 @ p["start.weight"].T + p["start.bias"])
    h1 = _sig(
        x[1] @ p["input.weight"].T
        + p["input.bias"]
        + h0 @ p["feedback.weight"].T
        + p["feedback.bias"]
    )
    np.testing.assert_allclose(y, np.stack([h0, h1]), rtol=1e-12)
    # a state_dict round trip into a fresh model reproduces it
    other = nn.Recurrent(nn.Linear(4, 4), nn.Linear(3, 4), nn.Linear(4, 4))
    other.load_state_dict(rnn.state_dict())
    np.testing.assert_allclose(nn.Sequencer(other).forward(x), y, rtol=1e-13)


def _table_module():
    # output is a table [Linear(x), tanh(Linear(x))]
    return (
        nn.Sequential().add(nn.Linear(3, 4)).add(nn.ConcatTable().add(nn.Identity()).add(nn.Tanh()))
    )


def test_sequencer_lengths_with_table_outputs():
    tn.manual_seed(3)
    T, lengths = 4, np.array([4, 2, 1])
    x = R.standard_normal((T, 3, 3))
    seq = nn.Sequencer(_table_module())
    out = seq.forward(list(x), lengths=lengths)
    full = nn.Sequencer(_table_module())
    full.load_state_dict(seq.state_dict())
    ref = full.forward(list(x))
    assert len(out) == T
    for t in range(T):
        keep = (t < lengths)[:, None]
        for k in range(2):
            np.testing.assert_allclose(out[t][k], np.where(keep, ref[t][k], 0), rtol=1e-13)
    g = [[R.standard_normal((3, 4)), R.standard_normal((3, 4))] for _ in range(T)]
    gx = seq.backward(list(x), g)
    gm = [[gt[k] * (t < lengths)[:, None] for k in range(2)] for t, gt in enumerate(g)]
    gref = full.backward(list(x), gm)
    np.testing.assert_allclose(np.stack(gx), np.stack(gref), rtol=1e-12, atol=1e-15)


def test_sequencer_array_input_with_table_outputs_is_a_shape_error():
    seq = nn.Sequencer(_table_module())
    with pytest.raises(tn.ShapeError, match="pass the steps as a list"):
        seq.forward(R.standard_normal((3, 2, 3)))


def test_sequencer_lengths_masks_rows_of_non_2d_outputs():
    # outputs (B, 3, 2) with B == 3: a (B, 1) mask would broadcast over axis 1, not the batch
    T, B, lengths = 3, 3, np.array([3, 1, 2])
    x = R.standard_normal((T, B, 6))
    seq = nn.Sequencer(nn.Reshape(3, 2))
    out = seq.forward(x, lengths=lengths)
    ref = x.reshape(T, B, 3, 2) * (np.arange(T)[:, None] < lengths)[..., None, None]
    np.testing.assert_array_equal(np.asarray(out), ref)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda m: nn.Sequencer(m),
        lambda m: nn.Sequencer(nn.Sequential().add(m).add(nn.Tanh())),
        lambda m: nn.Recursor(m),
        lambda m: nn.Repeater(m, 3),
        lambda m: nn.BiSequencer(m),
    ],
)
def test_containers_around_a_float32_module_compute_in_float32(wrap):
    model = wrap(nn.LSTM(3, 4).float())
    assert model.dtype == np.float32
    x = R.standard_normal((3, 2, 3))
    steps = x[0] if isinstance(model, (nn.Recursor, nn.Repeater)) else x
    y = model.forward(steps)
    leaves = y if isinstance(y, list) else [y]
    assert all(v.dtype == np.float32 for v in leaves)
    g = model.backward(
        steps, [np.ones_like(v) for v in y] if isinstance(y, list) else np.ones_like(y)
    )
    assert all(v.dtype == np.float32 for v in (g if isinstance(g, list) else [g]))
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    ref = wrap(nn.LSTM(3, 4).float())
    ref.load_state_dict(model.state_dict())
    ref.astype(np.float64)
    y64 = ref.forward(steps)
    np.testing.assert_allclose(
        np.stack(leaves), np.stack(y64 if isinstance(y64, list) else [y64]), rtol=1e-4, atol=1e-5
    )


def test_calling_a_sequencer_takes_lengths_like_forward():
    seq = nn.Sequencer(nn.GRU(3, 4))
    x = R.standard_normal((3, 2, 3))
    np.testing.assert_array_equal(seq(x, lengths=[3, 1]), seq.forward(x, lengths=[3, 1]))
