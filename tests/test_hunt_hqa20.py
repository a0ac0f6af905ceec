"""hqa20: data a model's dtype cannot hold, and Element-RNN parity cases no other test had.

- float64 data beyond float32's range given to a float32 model (input, grad_output, initial
  state) was cast to Inf silently, with a NumPy overflow warning from inside tapernn: now a
  NumericError, as `load_state_dict` already refused it.
- int32 / int64 data given to a float32 model was promoted by NumPy's rules: a Linear computed
  in float64 silently, a recurrent cell failed on "state 'h' changed dtype": now a DTypeError
  naming the input and the cast to make (ids a LookupTable reads stay integers).
- Element-RNN test 22's Recursor(Recursor(LSTM)) and test 36's rnnlm (one Sequencer over a
  stack == per-layer Sequencers, remembered, then evaluated) against torch-free references: the
  module stepped by hand (itself checked against NumPy equations) and the stacked Sequencers.
"""

import copy
import warnings

import numpy as np
import pytest
from cell_reference import lstm_step, run

import tapernn as tn
from tapernn import nn

RNG = np.random.default_rng(20)


def _f32_model():
    return nn.Sequencer(nn.FastLSTM(3, 4)).float()


def test_float64_input_beyond_float32_range_is_refused_not_made_inf():
    """Failed before hqa20: the output held Inf/NaN and NumPy warned 'overflow in cast'."""
    model = _f32_model()
    x = RNG.standard_normal((2, 2, 3))
    x[1, 0, 2] = 3e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no NumPy warning on the way either)
        with pytest.raises(tn.NumericError, match=r"an input array: values beyond float32's range"):
            model.forward(x)
    ok = model.forward(np.clip(x, -3e38, 3e38))  # in range: cast, as documented
    assert ok.dtype == np.float32 and np.isfinite(ok).all()
    x[1, 0, 2] = np.nan  # a NaN already in the data propagates, as in float64
    assert np.isnan(model.forward(x)[1, 0]).all()


def test_grad_output_and_initial_state_beyond_float32_range_are_refused():
    """Failed before hqa20 (both were cast to Inf silently)."""
    model = _f32_model()
    x = RNG.standard_normal((2, 2, 3)).astype(np.float32)
    model.forward(x)
    with pytest.raises(tn.NumericError, match=r"grad_output 0: values beyond float32's range"):
        model.backward(x, np.full((2, 2, 4), 1e300))
    cell = nn.FastLSTM(3, 4).float()
    with pytest.raises(tn.NumericError, match=r"values beyond float32's range"):
        cell.set_initial_state((np.zeros((2, 4)), np.full((2, 4), 1e40)))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
def test_wide_integer_data_into_a_float32_model_names_the_cast(dtype):
    """Failed before hqa20: the Linear returned float64 (a float32 model computing in float64)
    and the LSTM said only "state 'h' changed dtype float32 -> float64"."""
    x = np.arange(6).reshape(2, 3).astype(dtype)
    with pytest.raises(tn.DTypeError, match=r"input holds .* integers.*astype\(np.float32\)"):
        nn.Linear(3, 2).float().forward(x)
    with pytest.raises(tn.DTypeError, match=r"step input holds .* integers.*astype\(np.float32\)"):
        nn.FastLSTM(3, 2).float().forward(x)
    assert nn.Linear(3, 2).float().forward(x.astype(np.float32)).dtype == np.float32
    assert nn.Linear(3, 2).forward(x).dtype == np.float64  # a float64 model takes them
    assert nn.Linear(3, 2).float().forward(x.astype(np.int16)).dtype == np.float32
    mse = nn.MSECriterion().float()  # a target may be integers (as on main); the input not
    assert mse.forward(np.ones((2, 3), np.float32), x) == pytest.approx(np.mean((1.0 - x) ** 2))
    with pytest.raises(tn.DTypeError, match=r"input holds .* integers"):
        mse.forward(x, np.ones((2, 3), np.float32))


def test_integer_ids_into_a_float32_model_still_work():
    ids = np.array([[1, 2], [4, 0], [3, 3]])
    model = nn.Sequencer(nn.Sequential(nn.LookupTable(5, 3), nn.FastLSTM(3, 2))).float()
    y = model.forward(ids)
    assert y.dtype == np.float32 and y.shape == (3, 2, 2)


def _by_hand(lstm, x, g):
    lstm.forget()
    ys = [lstm.forward(x[t]).copy() for t in range(len(x))]
    gx = [lstm.backward(x[t], g[t]).copy() for t in reversed(range(len(x)))][::-1]
    return np.stack(ys), np.stack(gx)


def _same_and_update(a, b, lr):
    """Two runs' (output, input gradient, model) equal, parameter gradients too; both updated."""
    for u, v in zip(a[:2], b[:2]):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-13)
    for p, q in zip(a[2].parameters(), b[2].parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=0, atol=1e-13)
    a[2].update_parameters(lr)
    b[2].update_parameters(lr)


def test_recursor_of_a_recursor_equals_the_lstm_stepped_by_hand_over_updates():
    """Element-RNN test 22 (Recursor(Recursor(LSTM)), Sequencer(Recursor(LSTM)))."""
    tn.manual_seed(3)
    base = nn.LSTM(3, 5)
    x, g = RNG.standard_normal((4, 2, 3)), RNG.standard_normal((4, 2, 5))
    p = {k: v.data.copy() for k, v in base.named_parameters().items()}
    want, _ = run(lstm_step, p, x, 2, 5)
    ref = copy.deepcopy(base)
    for wrap in (lambda m: nn.Recursor(nn.Recursor(m)), lambda m: nn.Sequencer(nn.Recursor(m))):
        model, ref = wrap(copy.deepcopy(base)), copy.deepcopy(base)
        for _ in range(3):
            model.zero_grad_parameters()
            ref.zero_grad_parameters()
            if isinstance(model, nn.Sequencer):
                y, gx = model.forward(x).copy(), model.backward(x, g).copy()
            else:
                y, gx = _by_hand(model, x, g)
            _same_and_update((y, gx, model), (*_by_hand(ref, x, g), ref), 0.1)
    np.testing.assert_allclose(_by_hand(copy.deepcopy(base), x, g)[0], want, atol=1e-13)


def test_one_sequencer_over_a_stack_equals_stacked_sequencers_remembered_then_evaluated():
    """Element-RNN test 36 (rnnlm): 2 training chunks with updates, then 3 evaluation chunks."""
    tn.manual_seed(9)
    l1, lin, l2 = nn.FastLSTM(3, 5), nn.Linear(5, 5), nn.FastLSTM(5, 5)
    one = nn.Sequencer(nn.Sequential(l1, lin, l2)).remember("both")
    two = nn.Sequential(
        nn.Sequencer(copy.deepcopy(l1)).remember("both"),
        nn.Sequencer(copy.deepcopy(lin)),
        nn.Sequencer(copy.deepcopy(l2)).remember("both"),
    )
    for _ in range(2):
        x, g = RNG.standard_normal((4, 2, 3)), RNG.standard_normal((4, 2, 5))
        for m in (one, two):
            m.zero_grad_parameters()
        runs = [(m.forward(x).copy(), m.backward(x, g).copy(), m) for m in (one, two)]
        _same_and_update(*runs, 1.0)
    one.evaluate()
    two.evaluate()
    for _ in range(3):
        x = RNG.standard_normal((3, 2, 3))
        np.testing.assert_allclose(one.forward(x), two.forward(x), rtol=0, atol=1e-13)


def test_backward_past_an_evaluation_step_names_the_dropped_steps():
    """Stepping by hand, an evaluation step keeps only itself (docs/stateful.md). Backward into
    the training steps before it said "every step was already backwarded" (not so: dropped)."""
    tn.manual_seed(0)
    m = nn.Recursor(nn.Sequential(nn.FastLSTM(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)))
    xs = RNG.standard_normal((4, 2, 3))
    m.forward(xs[0])
    m.forward(xs[1])
    m.evaluate()
    m.forward(xs[2])
    m.training()
    m.forward(xs[3])
    m.backward(xs[3], np.zeros((2, 2)))
    m.backward(xs[2], np.ones((2, 2)))  # (the evaluation step's own gradient: no dropout)
    with pytest.raises(
        tn.StateError,
        match=r"steps 2\.\. were backwarded; the steps before "
        r"were dropped: a step in evaluation mode keeps only itself",
    ):
        m.backward(xs[1], np.zeros((2, 2)))
    m.max_bptt_step(3)
    m.forward(xs[0])
    with pytest.raises(tn.StateError, match=r"only the last 3 \(rho\) are kept"):
        for t in (0, 3, 2, 1):
            m.backward(xs[t], np.zeros((2, 2)))


@pytest.mark.parametrize("make", [nn.BiSequencer, nn.BiSequencerLM])
def test_bidirectional_of_no_steps_names_the_module(make):
    """Was "ShapeError: stack: needs at least one value", naming no module."""
    m = make(nn.FastLSTM(3, 4), nn.FastLSTM(3, 4))
    with pytest.raises(tn.ShapeError, match=r"BiSequencer.*expects at least one step.*T = 0"):
        m.forward(np.zeros((0, 2, 3)))


class _ZeroBiasCell(nn.Cell):
    state_names = ("h",)

    def __init__(self, d, h):
        super().__init__(d, h)
        self.w = self.parameter("w", (d + h, h))
        self.b = self.parameter("b", (h,), init="zeros")
        self.s = self.parameter("s", (h,), init="ones")

    def step(self, x, h):
        return tn.tanh(self.s * (tn.concat([x, h], axis=-1) @ self.w) + self.b)


def test_reset_reinitialises_every_parameter_as_it_was_built():
    """Failed before hqa20: reset() left parameters built with init="zeros" / "ones" / an array
    (a custom cell's biases as API.md writes them, NCEModule's -log(V) bias) at their trained
    values, and reset(stdv) drew a LookupTable from U(+-stdv), not Torch7's N(0, stdv)."""
    cell = _ZeroBiasCell(3, 4)
    nce = nn.NCEModule(8, 50, 5, np.full(50, 1 / 50))
    for p in cell.parameters() + nce.parameters():
        p.data[...] = 3.0  # "trained"
    cell.reset()
    nce.reset()
    assert np.array_equal(cell.b.data, np.zeros(4)) and np.array_equal(cell.s.data, np.ones(4))
    assert np.abs(cell.w.data).max() <= 1 / np.sqrt(4)
    np.testing.assert_array_equal(nce.named_parameters()["bias"].data, np.full(50, -np.log(50)))
    lookup = nn.LookupTable(400, 100)
    lookup.reset(0.1)
    assert 0.09 < lookup.weight.data.std() < 0.11  # N(0, 0.1): U(+-0.1)'s std is 0.058
    assert np.abs(lookup.weight.data).max() > 0.2
    cell.reset(0.01)  # Torch7's reset(stdv): every parameter U(+-stdv)
    assert all(np.abs(p.data).max() <= 0.01 for p in cell.parameters())


def test_reset_keeps_an_array_initialised_parameter_whose_array_is_not_known():
    """A parameter built from an array before hqa20 (a module pickled or checkpointed by an
    earlier version: `_init` says "array", no copy of the array kept) keeps its values on
    reset() -- the first version of reinitialise wrote zeros over them."""
    nce = nn.NCEModule(8, 50, 5, np.full(50, 1 / 50))
    bias = nce.named_parameters()["bias"]
    bias.data[...] = 3.0
    del bias._init_array
    nce.reset()
    np.testing.assert_array_equal(bias.data, np.full(50, 3.0))
