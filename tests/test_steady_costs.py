"""What a steady training step of the tutorial's size does besides its programs (issue 19,
htiny8; nn.steady_source): its backward reads the full backward's tap room as a constant (no
TrainingPair.tap_room call per step) and adds an intact block's gradient itself (no
Group.accumulate call); its forward drops the cell's per-step fields without making the
lists and the dict a forget or a release would (the write-back sets them whole). Where the
call leaves before the write-back -- the program raises, or the state check hands the call to
the general path -- the fields are what the general path leaves. Values: bit for bit those of
a model whose every call takes the general path (nn.steady.plan returns None)."""

import numpy as np
import pytest
from test_steady_entry import called

import tapernn as tn
from tapernn import nn
from tapernn.nn import runtime

T, B, H = 5, 1, 5
CELLS = ["FastLSTM", "LSTM", "GRU"]


def make(cell):
    tn.manual_seed(3)
    return nn.Sequencer(getattr(nn, cell)(H, H)).astype(np.float32)


def data(k):
    r = np.random.default_rng(k)
    x = r.standard_normal((T, B, H)).astype(np.float32)
    return x, r.standard_normal((T, B, H)).astype(np.float32)


def train(seq, steps, need_grad_input=True):
    """Grads and outputs of `steps` SGD steps (forward, zero, backward, update)."""
    out = []
    for k in range(steps):
        x, g = data(k % 2)  # (the same two arrays: steady calls)
        y = seq.forward(x).copy()
        seq.zero_grad_parameters()
        gi = seq.backward(x, g, need_grad_input=need_grad_input)
        out.append(
            (y, None if gi is None else gi.copy(), [p.grad.copy() for p in seq.parameters()])
        )
        seq.update_parameters(0.1)
    return out


def same_bits(a, b):
    for (ya, ga, gsa), (yb, gb, gsb) in zip(a, b):
        assert np.array_equal(ya, yb)
        assert (ga is None and gb is None) or np.array_equal(ga, gb)
        for p, q in zip(gsa, gsb):
            assert np.array_equal(p, q)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("need_grad_input", [True, False])
def test_steady_step_calls_no_tap_room_nor_group_accumulate(cell, need_grad_input, backend):
    seq = make(cell)
    x, g = data(0)
    train(seq, 3, need_grad_input)
    assert seq._runtime.steady is not None

    def step():
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g, need_grad_input=need_grad_input)

    names = [name for _, name in called(step)]
    assert "Group.accumulate" not in names, names
    if need_grad_input:  # (the variant without dX is looked up per call: its tap room too)
        assert "TrainingPair.tap_room" not in names, names
    assert "Runtime.slow_forward" not in names and "Runtime.backward" not in names, names


@pytest.mark.parametrize("cell", CELLS)
def test_steady_steps_equal_the_general_path_bit_for_bit(cell, backend, monkeypatch):
    fast = train(make(cell), 6) + train(make(cell), 3, need_grad_input=False)
    monkeypatch.setattr(runtime, "plan", lambda *a, **k: None)  # (every call: general path)
    slow = train(make(cell), 6) + train(make(cell), 3, need_grad_input=False)
    same_bits(fast, slow)


@pytest.mark.parametrize("cell", CELLS)
def test_steady_forward_makes_no_per_step_lists(cell, backend):
    """The success path of the generated forward builds no list or dict for the cell's
    outputs / inputs / states (before: `[], []` and `{'h': [], 'c': []}` every call)."""
    seq = make(cell)
    train(seq, 2)
    source = seq._runtime.steady.entry.source
    success = source.split("except BaseException:")[0].split("hooks_done=True")[-1]
    for made in ('"outputs"], ', '"states"] = {'):
        assert made not in success, source


def cleared_like_the_general_path(cell_module):
    fields = cell_module.__dict__
    assert fields["outputs"] == [] and fields["inputs"] == []
    assert fields["states"] == {name: [] for name in cell_module.state_names}
    assert fields["_n_steps"] == 0 and fields["_grad_hidden"] == {}
    assert fields["_state"] is None


@pytest.mark.parametrize("cell", CELLS)
def test_a_failing_steady_forward_leaves_the_fields_cleared(cell, backend):
    seq = make(cell)
    train(seq, 2)
    x, _ = data(0)
    exe = seq._runtime.steady.exe
    program = seq._runtime.steady.program

    def fail(args):
        raise tn.TapernnError("injected")

    program.run = fail
    if getattr(program.program.fn, "kernel", None) is not None:  # (the direct runner too)
        seq._runtime.steady.scratch.clear()
    with pytest.raises(tn.TapernnError, match="injected"):
        seq.forward(x)
    cleared_like_the_general_path(seq.module)
    del program.run  # (the class's again)
    assert exe is seq._runtime.steady.exe
    y = seq.forward(x)
    assert len(seq.module.outputs) == T and np.array_equal(seq.module.outputs[-1], y[-1])


@pytest.mark.parametrize("cell", CELLS)
def test_the_state_checks_general_path_sees_the_fields_cleared(cell, backend, monkeypatch):
    """A user initial state set after the steady plan: the steady forward forgets, hands the
    call to the general path (hooks done), which starts from that state."""
    seq, other = make(cell), make(cell)
    train(seq, 2)
    monkeypatch.setattr(runtime, "plan", lambda *a, **k: None)  # (other: the general path)
    train(other, 2)
    x, _ = data(0)
    n_states = 2 if "LSTM" in cell else 1
    state = tuple(np.full((B, H), 0.25, np.float32) for _ in range(n_states))
    for m in (seq, other):
        m.module.set_initial_state(state if n_states > 1 else state[0])
    y = seq.forward(x).copy()
    assert len(seq.module.outputs) == T
    assert np.array_equal(y, other.forward(x))
