"""Sequencer: lists and arrays, remember/forget modes, truncated BPTT across chunks, stacking,
field filling, trace caching, whole-model gradcheck, a custom cell trained without a backward."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.testing import gradcheck_module

D, H = 3, 4


def lstm_pair(seed=0):
    tn.manual_seed(seed)
    a = nn.LSTM(D, H)
    b = nn.LSTM(D, H)
    b.load_state_dict(a.state_dict())
    return a, b


def test_array_and_list_inputs_agree():
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.GRU(D, H))
    x = np.random.default_rng(0).standard_normal((5, 2, D))
    g = np.ones((5, 2, H))
    out_arr = seq.forward(x)
    ga = seq.backward(x, g)
    out_list = seq.forward(list(x))
    gl = seq.backward(list(x), list(g))
    assert out_arr.shape == (5, 2, H) and isinstance(out_list, list)
    np.testing.assert_allclose(out_arr, np.stack(out_list), rtol=0, atol=0)
    assert ga.shape == x.shape
    np.testing.assert_allclose(ga, np.stack(gl), rtol=1e-13)


def test_remembered_chunks_equal_one_long_sequence_with_chunk_local_bptt():
    a, b = lstm_pair(1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((17, 2, D))
    g = rng.standard_normal((17, 2, H))
    whole = nn.Sequencer(a).forward(x)
    seq = nn.Sequencer(b).remember("both")
    start, outs = 0, []
    for n in (5, 4, 5, 3):
        outs.append(seq.forward(x[start : start + n]))
        start += n
    np.testing.assert_allclose(np.concatenate(outs), whole, rtol=1e-12, atol=1e-14)
    # gradients of the last chunk are chunk-local BPTT: the same as stepping from its start state
    ref = nn.LSTM(D, H)
    ref.load_state_dict(b.state_dict())
    b.zero_grad_parameters()
    seq.backward(x[14:17], g[14:17])
    ref.set_initial_state(b_state_before_last_chunk(a, x))
    ref_seq = nn.Sequencer(ref)
    ref_seq.forward(x[14:17])
    ref.zero_grad_parameters()
    ref_seq.backward(x[14:17], g[14:17])
    for (name, p), q in zip(b.named_parameters().items(), ref.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-11, atol=1e-13, err_msg=name)


def b_state_before_last_chunk(a, x):
    seq = nn.Sequencer(a)
    seq.forward(x[:14])
    return a.get_hidden_state(-1)


@pytest.mark.parametrize(
    "mode,remember_train,remember_eval",
    [
        ("neither", False, False),
        ("train", True, False),
        ("eval", False, True),
        ("both", True, True),
    ],
)
def test_remember_modes(mode, remember_train, remember_eval):
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.LSTM(D, H)).remember(mode)
    x = np.random.default_rng(0).standard_normal((3, 2, D))
    from_zero = seq.forward(x).copy()  # a fresh module starts from zeros in every mode
    seq.forget()
    for phase, remembers in (("train", remember_train), ("eval", remember_eval)):
        getattr(seq, "training" if phase == "train" else "evaluate")()  # switching forgets
        first = seq.forward(x).copy()
        np.testing.assert_allclose(first, from_zero, rtol=1e-13)
        second = seq.forward(x)
        assert (not np.allclose(first, second)) == remembers, (mode, phase)


def test_mode_switch_forgets_and_default_is_neither():
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.LSTM(D, H))
    assert seq.remember_mode == "neither"
    assert nn.Sequencer(nn.LSTM(D, H)).remember().remember_mode == "both"
    seq.remember("both")
    x = np.random.default_rng(0).standard_normal((3, 2, D))
    fresh = seq.forward(x).copy()
    assert not np.allclose(seq.forward(x), fresh)
    seq.evaluate()
    np.testing.assert_allclose(seq.forward(x), fresh, rtol=1e-13)
    seq.training()
    np.testing.assert_allclose(seq.forward(x), fresh, rtol=1e-13)
    seq.forget()
    np.testing.assert_allclose(seq.forward(x), fresh, rtol=1e-13)


def test_stack_in_one_sequencer_equals_stacked_sequencers():
    tn.manual_seed(0)
    l1, l2 = nn.LSTM(D, H), nn.FastLSTM(H, H)
    inner = nn.Sequential().add(l1).add(nn.Linear(H, H)).add(l2)
    one = nn.Sequencer(inner)
    stacked = (
        nn.Sequential().add(nn.Sequencer(l1)).add(nn.Sequencer(inner.get(1))).add(nn.Sequencer(l2))
    )
    x = np.random.default_rng(1).standard_normal((4, 2, D))
    g = np.random.default_rng(2).standard_normal((4, 2, H))
    a = one.forward(x)
    one.zero_grad_parameters()
    ga = one.backward(x, g)
    grads_a = [p.grad.copy() for p in one.parameters()]
    b = stacked.forward(x)
    stacked.zero_grad_parameters()
    gb = stacked.backward(x, g)
    np.testing.assert_allclose(a, b, rtol=1e-13)
    np.testing.assert_allclose(ga, gb, rtol=1e-11, atol=1e-14)
    for pa, pb in zip(grads_a, [p.grad for p in one.parameters()]):
        np.testing.assert_allclose(pa, pb, rtol=1e-11, atol=1e-14)


def test_inner_fields_are_filled_as_if_stepped():
    tn.manual_seed(0)
    lt = nn.LookupTable(10, D)
    model = nn.Sequential().add(lt).add(nn.SplitTable(0)).add(nn.Sequencer(nn.LSTM(D, H)))
    model.add(nn.Sequencer(nn.LSTM(H, H)))
    ids = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 1]])  # (T=4, B=3)
    model.forward(ids)
    first, second = model.get(2).get(0), model.get(3).get(0)
    assert len(first.inputs) == 4 and first.step == 4 and len(first.cells) == 4
    np.testing.assert_allclose(first.inputs[2], lt.weight.data[ids[2]])
    np.testing.assert_allclose(second.inputs[2], first.outputs[2])
    np.testing.assert_allclose(model.get(3).output[3], second.outputs[3])
    np.testing.assert_allclose(model.get(0).output, lt.weight.data[ids])


def test_second_forward_does_not_retrace_and_updates_do_not_recompile():
    tn.manual_seed(0)
    model = nn.Sequential().add(nn.Sequencer(nn.LSTM(D, H))).add(nn.SelectTable(-1))
    crit = nn.MSECriterion()
    x = [np.ones((2, D))] * 3
    for _ in range(3):
        out = model.forward(x)
        crit.forward(out, np.zeros((2, H)))
        model.zero_grad_parameters()
        model.backward(x, crit.backward(out, np.zeros((2, H))))
        model.update_parameters(0.1)
    assert model.trace_count == 1 and crit.trace_count == 1
    compiled = model.compiled
    model.forward(x)
    assert model.compiled is compiled
    model.forward([np.ones((5, D))] * 3)  # a new batch size is a new signature
    assert model.trace_count == 2


def test_whole_model_gradcheck():
    tn.manual_seed(0)
    V, E, C = 7, 3, 4
    model = nn.Sequential().add(nn.LookupTable(V, E)).add(nn.SplitTable(0))
    model.add(nn.Sequencer(nn.LSTM(E, H))).add(nn.Sequencer(nn.Dropout(0.3)))
    model.add(nn.Sequencer(nn.LSTM(H, H)))
    model.add(nn.Sequencer(nn.Sequential().add(nn.Linear(H, C)).add(nn.LogSoftMax())))
    crit = nn.SequencerCriterion(nn.ClassNLLCriterion())
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(4, 2))
    targets = list(rng.integers(0, C, size=(4, 2)))
    assert gradcheck_module(model, crit, ids, targets, seed=11, max_entries=25)


class MGU(nn.Cell):  # the contract's example cell: no backward anywhere
    state_names = ("h",)

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w_f = self.parameter("w_f", (input_size + hidden_size, hidden_size))
        self.b_f = self.parameter("b_f", (hidden_size,), init="zeros")
        self.w_h = self.parameter("w_h", (input_size + hidden_size, hidden_size))
        self.b_h = self.parameter("b_h", (hidden_size,), init="zeros")

    def step(self, x, h):
        f = tn.sigmoid(tn.concat([x, h], axis=-1) @ self.w_f + self.b_f)
        g = tn.tanh(tn.concat([x, f * h], axis=-1) @ self.w_h + self.b_h)
        return (1 - f) * h + f * g


def test_custom_cell_trains_through_sequencer():
    tn.manual_seed(0)
    model = (
        nn.Sequential().add(nn.Sequencer(MGU(2, 8))).add(nn.SelectTable(-1)).add(nn.Linear(8, 1))
    )
    crit = nn.MSECriterion()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16, 2))
    y = x[:, :, 0].sum(0, keepdims=True).T * 0.3  # sum of the first feature over time
    opt = tn.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(150):
        out = model.forward(x)
        losses.append(crit.forward(out, y))
        opt.zero_grad()
        model.backward(x, crit.backward(out, y))
        opt.step()
    assert losses[-1] < 0.1 * losses[0]
    assert gradcheck_module(model, crit, x[:, :3], y[:3], max_entries=10)
