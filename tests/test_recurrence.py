"""Recurrence: modules made recurrent, against NumPy equations (complex-step gradients), against
FastLSTM for a table state (with zero-masked rows), step-wise vs Sequencer, errors, float32."""

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, rnn_step, run

import tapernn as tn
from tapernn import functional as F
from tapernn import nn
from tapernn.errors import ShapeError

T, B, D, H = 4, 3, 3, 4


def elman(D=D, H=H):
    step = (
        nn.Sequential()
        .add(nn.ParallelTable().add(nn.Linear(D, H)).add(nn.LinearNoBias(H, H)))
        .add(nn.CAddTable())
        .add(nn.Tanh())
    )
    return nn.Recurrence(step, H, 1)


def elman_params(r):
    p = r.named_parameters()
    return {
        "w_xh": p["0.0.0.weight"].data.copy(),
        "b_h": p["0.0.0.bias"].data.copy(),
        "w_hh": p["0.0.1.weight"].data.copy(),
    }


NAMES = {"w_xh": "0.0.0.weight", "b_h": "0.0.0.bias", "w_hh": "0.0.1.weight"}


@pytest.mark.parametrize("batch", [None, B], ids=["unbatched", "batched"])
def test_recurrence_matches_numpy_equations(batch):
    tn.manual_seed(0)
    r = elman()
    rng = np.random.default_rng(0)
    shape = (T, D) if batch is None else (T, batch, D)
    xs, seed = rng.standard_normal(shape), rng.standard_normal(shape[:-1] + (H,))
    expected, _ = run(rnn_step, elman_params(r), xs, 1, H)
    seq = nn.Sequencer(r)
    np.testing.assert_allclose(seq.forward(xs), expected, rtol=1e-12, atol=1e-14)
    seq.zero_grad_parameters()
    gin = seq.backward(xs, seed)
    exact = complex_step_grads(rnn_step, elman_params(r), xs, 1, H, seed)
    np.testing.assert_allclose(gin, exact["input"], rtol=1e-10, atol=1e-12)
    for ours, theirs in NAMES.items():
        np.testing.assert_allclose(
            r.named_parameters()[theirs].grad, exact[ours], rtol=1e-10, atol=1e-12, err_msg=ours
        )


class LSTMStep(nn.Module):
    """FastLSTM's math as a plain module on [x, [h, c]] -> [h, c] (a table state)."""

    def __init__(self):
        super().__init__()
        self.i2g = nn.Linear(D, 4 * H)
        self.o2g = nn.LinearNoBias(H, 4 * H)

    def build(self, inputs):
        x, (h, c) = inputs
        i, g, f, o = tn.split(self.i2g(x) + self.o2g(h), 4, axis=-1)
        c = F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
        return [F.sigmoid(o) * F.tanh(c), c]


def test_table_state_equals_fastlstm_with_masked_rows():
    tn.manual_seed(1)
    rec = nn.Recurrence(LSTMStep(), [H, H], 1).mask_zero()
    fast = nn.FastLSTM(D, H).mask_zero()
    fast.load_state_dict({k[2:]: v for k, v in rec.state_dict().items()})
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((T, B, D))
    xs[:2, 0] = 0
    xs[2, 1] = 0
    gs = rng.standard_normal((T, B, H))
    a, b = nn.Sequencer(rec), nn.Sequencer(fast)
    out_a, out_b = a.forward(list(xs)), b.forward(list(xs))
    for t in range(T):
        np.testing.assert_allclose(out_a[t][0], out_b[t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out_a[T - 1][1], fast.cells[T - 1], rtol=1e-12, atol=1e-14)
    assert np.all(out_a[1][0][0] == 0) and np.all(out_a[2][1][1] == 0)
    gin_a = a.backward(list(xs), [[g, np.zeros_like(g)] for g in gs])
    gin_b = b.backward(list(xs), list(gs))
    for t in range(T):
        np.testing.assert_allclose(gin_a[t], gin_b[t], rtol=1e-12, atol=1e-14)
    for k, p in fast.named_parameters().items():
        np.testing.assert_allclose(
            rec.named_parameters()["0." + k].grad, p.grad, rtol=1e-12, atol=1e-14, err_msg=k
        )


def test_fastlstm_reference_agrees_with_the_table_module():
    """The NumPy FastLSTM equations read the same parameters (guards the name mapping above)."""
    tn.manual_seed(2)
    rec = nn.Recurrence(LSTMStep(), [H, H], 1)
    p = {k[2:]: v for k, v in rec.state_dict().items()}
    xs = np.random.default_rng(2).standard_normal((T, B, D))
    expected, _ = run(fastlstm_step, p, xs, 2, H)
    out = nn.Sequencer(rec).forward(list(xs))
    np.testing.assert_allclose(np.stack([o[0] for o in out]), expected, rtol=1e-12, atol=1e-14)


def test_stepwise_equals_sequencer():
    tn.manual_seed(3)
    a, b = elman(), elman()
    b.load_state_dict(a.state_dict())
    rng = np.random.default_rng(3)
    xs, gs = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    stepped = [a.forward(x) for x in xs]
    gin = [a.backward(xs[t], gs[t]) for t in reversed(range(T))][::-1]
    seq = nn.Sequencer(b)
    out, seq_gin = seq.forward(xs), seq.backward(xs, gs)
    np.testing.assert_allclose(np.stack(stepped), out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.stack(gin), seq_gin, rtol=1e-10, atol=1e-13)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-10, atol=1e-13)
    assert a.step == T and len(a.outputs) == T


def test_gradcheck_and_float32():
    tn.manual_seed(4)
    seq = nn.Sequencer(nn.Recurrence(LSTMStep(), [H, H], 1))
    xs = np.random.default_rng(4).standard_normal((T, B, D))
    head = nn.Sequential().add(seq).add(nn.SelectTable(-1)).add(nn.SelectTable(0))
    assert tn.testing.gradcheck_module(head, nn.MSECriterion(), list(xs), np.zeros((B, H)))
    h32 = head.astype(np.float32)
    y = h32.forward([x.astype(np.float32) for x in xs])
    assert y.dtype == np.float32


class WrongState(nn.Module):
    def build(self, inputs):
        return [inputs[1], inputs[1]]


@pytest.mark.parametrize(
    "module,size,n_dim,x,match",
    [
        (WrongState(), H, 1, np.zeros((B, D)), "structured like output_size"),
        (nn.SelectTable(0), H, 1, np.zeros((B, H + 1)), r"state h of shape \(3, 5\), expected"),
        (nn.SelectTable(1), H, 2, np.zeros(D), "n_input_dim is 2"),
    ],
)
def test_bad_step_module_or_input(module, size, n_dim, x, match):
    r = nn.Recurrence(module, size, n_dim)
    with pytest.raises(ShapeError, match=match) as info:
        r.forward(x)
    assert "nn.Recurrence" in str(info.value)


def test_output_size_forms():
    r = nn.Recurrence(nn.SelectTable(1), (2, 3), 1)
    np.testing.assert_array_equal(r.forward(np.ones((5, 4))), np.zeros((5, 2, 3)))
    r = nn.Recurrence(nn.SelectTable(1), [2, [(3, 1)]], 1)
    out = r.forward(np.ones(4))  # unbatched: no batch dim in the zeros
    assert out[0].shape == (2,) and out[1][0].shape == (3, 1)
    with pytest.raises(tn.errors.ArgumentError, match="output_size"):
        nn.Recurrence(nn.Identity(), "4", 1)


def test_sequencer_lengths_match_the_rnn_cell():
    tn.manual_seed(6)
    rec = elman()
    cell = nn.RNN(D, H)
    for ours, theirs in NAMES.items():
        getattr(cell, ours).data[...] = rec.named_parameters()[theirs].data
    rng = np.random.default_rng(6)
    xs, gs = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    lengths = np.array([4, 2, 3])
    a, b = nn.Sequencer(rec), nn.Sequencer(cell)
    np.testing.assert_allclose(
        a.forward(xs, lengths), b.forward(xs, lengths), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(a.backward(xs, gs), b.backward(xs, gs), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        rec.get_hidden_state(-1)[0], cell.get_hidden_state(-1)[0], rtol=1e-12, atol=1e-15
    )
