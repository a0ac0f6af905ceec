"""The steady backward's parameter gradients added into `.grad` by the program's runner
(issue 19, htiny9: numba_program.scratch_runner's `into`, one numba_update.add_flat call after
the kernel in place of a NumPy `g += part` per gradient): Torch7's accumulation kept exactly --
backward twice without zero_grad_parameters adds twice, zero_grad between starts again, with
and without the input's gradient -- bit for bit the general path's values (float32 and
float64), the NumPy equations' (float64, 1e-12), and NumPy's adds where a `.grad` cannot take
them (not C-contiguous, a block no longer intact)."""

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, gru_step, lstm_step

import tapernn as tn
from tapernn import nn
from tapernn.nn import runtime

D, H, B, T = 3, 4, 2, 5
CELLS = {
    "FastLSTM": (lambda: nn.FastLSTM(D, H), fastlstm_step, 2),
    "LSTM": (lambda: nn.LSTM(D, H), lstm_step, 2),
    "GRU": (lambda: nn.GRU(D, H), gru_step, 1),
}
# (zero_grad_parameters before this backward?, need_grad_input): accumulation over 3, then 2
PLAN = [(True, True), (False, True), (False, False), (True, False), (False, True), (True, True)]


def make(cell, dtype):
    tn.manual_seed(7)
    seq = nn.Sequencer(CELLS[cell][0]()).astype(dtype)
    seq.set_plan_options(tn.PlanOptions(backend="numba"))
    return seq


def data(dtype):
    r = np.random.default_rng(11)
    x = r.standard_normal((T, B, D)).astype(dtype)
    return x, r.standard_normal((T, B, H)).astype(dtype)


def train(seq, x, g, plan=PLAN, warm=3):
    """What each step of `plan` leaves: output, grad_input, every `.grad` (copies); after
    `warm` untimed steps (the steady plan made, the kernels in)."""
    for _ in range(warm):
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)
    out = []
    for zero, need in plan:
        y = seq.forward(x).copy()
        if zero:
            seq.zero_grad_parameters()
        gi = seq.backward(x, g, need_grad_input=need)
        grads = [p.grad.copy() for p in seq.parameters()]
        out.append((y, None if gi is None else gi.copy(), grads))
    return out


def assert_same_bits(a, b):
    for (ya, ga, pa), (yb, gb, pb) in zip(a, b, strict=True):
        assert np.array_equal(ya, yb)
        assert (ga is None) == (gb is None) and (ga is None or np.array_equal(ga, gb))
        for p, q in zip(pa, pb, strict=True):
            assert p.dtype == q.dtype and np.array_equal(p, q)


def runners(seq):
    """The steady plan's direct runners that add into `.grad` (their `into_grads`)."""
    plan = seq._runtime.steady
    assert plan is not None
    found = []
    for _, _, direct in plan.scratch.values():
        ns = getattr(direct, "__globals__", {})
        if ns.get("into_grads"):
            found.append(ns)
    return found


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_grads_accumulate_as_the_general_path_does(cell, dtype, monkeypatch):
    x, g = data(dtype)
    fast_seq = make(cell, dtype)
    fast = train(fast_seq, x, g)
    # both backward programs (with and without the input's gradient) add into `.grad`
    found = runners(fast_seq)
    assert len(found) == 2
    grads = [p.grad for p in fast_seq.parameters()]
    for ns in found:
        for flat in ns["into_grads"]:
            assert any(np.shares_memory(flat, grad) for grad in grads)
        # every parameter's `.grad` is covered (loose ones, or their block's)
        for grad in grads:
            assert any(np.shares_memory(flat, grad) for flat in ns["into_grads"])
    monkeypatch.setattr(runtime, "plan", lambda *a, **k: None)  # (every call: general path)
    slow_seq = make(cell, dtype)
    slow = train(slow_seq, x, g)
    assert slow_seq._runtime.steady is None
    assert_same_bits(fast, slow)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_accumulated_grads_equal_the_equations(cell):
    """float64: after each step of PLAN, every `.grad` is (backwards since the last
    zero_grad_parameters) x the equations' gradient (the parameters never change here)."""
    x, g = data(np.float64)
    seq = make(cell, np.float64)
    _, step, n_states = CELLS[cell]
    p = {k: q.data.copy() for k, q in seq.module.named_parameters().items()}
    want = complex_step_grads(step, p, x, n_states, H, g)
    names = list(seq.module.named_parameters())
    multiples, count = [], 0  # each step's multiple of the one backward's gradient
    for zero, _ in PLAN:
        count = 1 if zero else count + 1
        multiples.append(count)
    assert multiples == [1, 2, 3, 1, 2, 1]
    for k, (_, _, grads) in enumerate(train(seq, x, g)):
        for name, grad in zip(names, grads, strict=True):
            np.testing.assert_allclose(
                grad, multiples[k] * want[name], rtol=1e-12, atol=1e-12, err_msg=name
            )
    assert runners(seq)


def test_a_grad_numba_cannot_add_into_takes_numpys_add(monkeypatch):
    """A `.grad` rebound to a strided array (packing.VERSION: a new plan) is not added by the
    runner (its flat view would be a copy) but by NumPy's add, to the same values."""
    x, g = data(np.float32)
    seqs = []
    for _ in range(2):
        seq = make("FastLSTM", np.float32)
        train(seq, x, g, plan=[])
        bias = seq.module.i2g.bias
        wide = np.zeros((bias.grad.shape[0], 2), np.float32)
        bias.grad = wide[:, 0]  # (not C-contiguous)
        seqs.append((seq, wide))
    fast = train(seqs[0][0], x, g, warm=2)
    found = runners(seqs[0][0])
    assert found
    bias_grad = seqs[0][0].module.i2g.bias.grad
    for ns in found:
        assert not any(np.shares_memory(flat, bias_grad) for flat in ns["into_grads"])
    monkeypatch.setattr(runtime, "plan", lambda *a, **k: None)
    seqs[1][0]._runtime.steady = None
    slow = train(seqs[1][0], x, g, warm=2)
    assert_same_bits(fast, slow)
    assert np.array_equal(seqs[0][1][:, 0], seqs[1][1][:, 0])
    assert not seqs[0][1][:, 1].any()  # (the column beside it never written)
