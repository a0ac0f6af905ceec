"""Rolled Sequencer programs (issue 16): the step traced until its graph repeats, peeled steps +
one scan over the template; rolled == unroll=True == NumPy equations (values and gradients of
input, parameters and initial states), the fields filled per step, step-dependent cells and
REINFORCE unrolled with the reason reported, a new length without re-tracing the step."""

import numpy as np
import pytest
from cell_fuzz import make_case, make_cell, numpy_outputs
from cell_reference import fastlstm_step, gru_step, lstm_step, rnn_step, run

import tapernn as tn
from tapernn import nn, tracing

D, H, B = 3, 4, 2


class Leaky(nn.Cell):
    """A custom cell: h' = tanh(W x + U h) * a + h * (1 - a)."""

    state_names = ("h",)

    def __init__(self, d, h):
        super().__init__(d, h)
        self.parameter("w", (h, d))
        self.parameter("u", (h, h))
        self.a = 0.3

    def step(self, x, h):
        return tn.tanh(x @ self.w.T + h @ self.u.T) * self.a + h * (1 - self.a)


def leaky_step(p, x, h):
    return (np.tanh(x @ p["w"].T + h @ p["u"].T) * 0.3 + h * 0.7,)


CELLS = {
    "lstm": (lambda: nn.LSTM(D, H), lstm_step, 2),
    "fastlstm": (lambda: nn.FastLSTM(D, H), fastlstm_step, 2),
    "gru": (lambda: nn.GRU(D, H), gru_step, 1),
    "rnn": (lambda: nn.RNN(D, H), rnn_step, 1),
    "custom": (lambda: Leaky(D, H), leaky_step, 1),
}


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


def twins(make, seed=0, dtype=np.float64):
    tn.manual_seed(seed)
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    return a.astype(dtype), b.astype(dtype)


def rolled_note(model):
    notes = model.compile_report().notes
    return [n for n in notes if "rolled:" in n and "unrolled" not in n]


def grads_of(module):
    return {k: p.grad.copy() for k, p in module.named_parameters().items()}


def run_pair(rolled, unrolled, x, g, **kw):
    out = []
    for seq in (rolled, unrolled):
        seq.zero_grad_parameters()
        y = seq.forward(x, **kw)
        gx = seq.backward(x, g)
        out.append((np.array(y), np.array(gx), grads_of(seq)))
    return out


def assert_same(a, b, tol=1e-12):
    (ya, gxa, pa), (yb, gxb, pb) = a, b
    np.testing.assert_allclose(ya, yb, rtol=tol, atol=tol)
    np.testing.assert_allclose(gxa, gxb, rtol=tol, atol=tol)
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=tol, atol=tol, err_msg=k)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cells_rolled_equal_unrolled_and_numpy(name):
    make, step, n_states = CELLS[name]
    a, b = twins(make)
    rolled, unrolled = nn.Sequencer(a, unroll=False), nn.Sequencer(b, unroll=True)
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((7, B, D)), rng.standard_normal((7, B, H))
    r, u = run_pair(rolled, unrolled, x, g)
    assert rolled_note(rolled) and not rolled_note(unrolled)
    assert_same(r, u)
    want, states = run(step, {k: p.data for k, p in a.named_parameters().items()}, x, n_states, H)
    np.testing.assert_allclose(r[0], want, rtol=1e-12, atol=1e-13)
    # the per-step fields, as if stepped one by one
    assert len(a.outputs) == 7 and len(a.inputs) == 7
    # (bit for bit on NumPy; numba's loop kernel sums tiny matmuls in its own order)
    same = np.testing.assert_array_equal if tn.get_backend() == "numpy" else _close
    for t in range(7):
        same(a.outputs[t], b.outputs[t])
        np.testing.assert_array_equal(a.inputs[t], x[t])
        for k, sname in enumerate(a.state_names):
            np.testing.assert_allclose(a.states[sname][t], states[t][k], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(a.get_hidden_state(-1)[0], states[-1][0], rtol=1e-12, atol=1e-13)


def test_list_input_float32_and_initial_state_gradients():
    a, b = twins(CELLS["lstm"][0], seed=2, dtype=np.float32)
    rolled, unrolled = nn.Sequencer(a, unroll=False), nn.Sequencer(b, unroll=True)
    rng = np.random.default_rng(3)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    for m in (a, b):
        m.set_initial_state((h0, c0))
    x = [v.astype(np.float32) for v in rng.standard_normal((6, B, D))]
    g = [v.astype(np.float32) for v in rng.standard_normal((6, B, H))]
    r, u = run_pair(rolled, unrolled, x, g)
    assert rolled_note(rolled)
    assert r[0].dtype == np.float32
    assert_same(r, u, tol=1e-5)
    for ga, gb in zip(a.get_grad_initial_state(), b.get_grad_initial_state()):
        np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-6)


def test_lengths_mask_zero_and_remember_across_chunks():
    a, b = twins(CELLS["gru"][0], seed=4)
    rolled = nn.Sequencer(a, unroll=False).remember("both")
    unrolled = nn.Sequencer(b, unroll=True).remember("both")
    rng = np.random.default_rng(5)
    for T in (5, 8, 3, 6):  # chunks of different lengths: the template serves every one
        x, g = rng.standard_normal((T, 3, D)), rng.standard_normal((T, 3, H))
        lengths = np.array([T, max(1, T - 2), 1])
        r, u = run_pair(rolled, unrolled, x, g, lengths=lengths)
        assert_same(r, u)
        np.testing.assert_array_equal(r[0][lengths[2] :, 2], 0)
        np.testing.assert_allclose(a._state[0], b._state[0], rtol=1e-12, atol=1e-13)
    # traced from zeros, then from a remembered state (a state input): later lengths reuse it
    assert rolled.trace_count == 2
    c, d = twins(lambda: nn.RNN(D, H).mask_zero(), seed=6)
    x = rng.standard_normal((6, B, D))
    x[:2, 0] = 0  # left padding
    r, u = run_pair(
        nn.Sequencer(c, unroll=False), nn.Sequencer(d, unroll=True), x, np.ones((6, B, H))
    )
    assert_same(r, u)


def test_stacks_and_sequential_inside():
    tn.manual_seed(7)

    def model():
        return nn.Sequential(
            nn.Sequencer(nn.LSTM(D, H), unroll=False),
            nn.Sequencer(nn.Sequential(nn.GRU(H, H), nn.Linear(H, 2)), unroll=False),
        )

    a, b = model(), model()
    b.load_state_dict(a.state_dict())
    for m in b.modules():
        if isinstance(m, nn.Sequencer):
            m.unroll = True
    rng = np.random.default_rng(8)
    x, g = rng.standard_normal((5, B, D)), rng.standard_normal((5, B, 2))
    r, u = run_pair(a, b, x, g)
    assert len(rolled_note(a)) == 2
    assert_same(r, u)


class StepSwitch(nn.Cell):
    """Different math from step `at` on, chosen by Python control flow on the step number."""

    state_names = ("h",)

    def __init__(self, d, h, at, how="tracing"):
        super().__init__(d, h)
        self.parameter("w", (h, d))
        self.at, self.how = at, how

    def step(self, x, h):
        t = tracing.current_step()
        if self.how == "counter":
            t = current_count(self)
        y = tn.tanh(x @ self.w.T + h)
        return y * 2.0 if t >= self.at else y


def current_count(cell):
    from tapernn.nn.context import current_build

    ctx = current_build()
    return ctx.steps.get(cell, 0) - 1  # counted before the step function runs


def step_switch_numpy(w, x, at):
    h, out = np.zeros((x.shape[1], w.shape[0])), []
    for t in range(len(x)):
        h = np.tanh(x[t] @ w.T + h) * (2.0 if t >= at else 1.0)
        out.append(h)
    return np.stack(out)


@pytest.mark.parametrize("at,how", [(7, "tracing"), (30, "tracing"), (30, "counter")])
def test_step_dependent_cell_runs_unrolled_and_says_why(at, how):
    cell = StepSwitch(D, H, at, how)
    seq = nn.Sequencer(cell, unroll=False)
    x = np.random.default_rng(9).standard_normal((35, B, D)) * 0.3
    y = seq.forward(x)
    np.testing.assert_allclose(y, step_switch_numpy(cell.w.data, x, at), rtol=1e-12, atol=1e-13)
    notes = seq.compile_report().notes
    assert not rolled_note(seq) and any("unrolled" in n and "step number" in n for n in notes)


def test_new_length_reuses_the_template_without_tracing_a_step():
    calls = []

    class Counted(Leaky):
        def step(self, x, h):
            calls.append(1)
            return super().step(x, h)

    tn.manual_seed(10)
    seq = nn.Sequencer(Counted(D, H), unroll=False)
    rng = np.random.default_rng(11)
    seq.forward(rng.standard_normal((50, B, D)))
    traced = len(calls)
    assert seq.trace_count == 1 and traced <= 3  # the period check, not 50 steps
    template = [n for n in seq._runtime.last.graph.nodes if n.op == "scan"]
    y = seq.forward(rng.standard_normal((73, B, D)))
    assert y.shape == (73, B, H) and len(calls) == traced and seq.trace_count == 1
    if template:  # the scan node holds the same body Graph object: compiled once
        again = [n for n in seq._runtime.last.graph.nodes if n.op == "scan"]
        assert again[0].attrs["body"] is template[0].attrs["body"]
    seq.forward(rng.standard_normal((50, B + 1, D)))  # a new batch size: a new step signature
    assert seq.trace_count == 2


def test_reinforce_runs_unrolled_and_says_why():
    # (dropout rolls: tests/test_rolled_dropout.py; a REINFORCE choice's log-probability is a
    # seeded output of each step)
    tn.manual_seed(12)
    seq = nn.Sequencer(nn.Sequential(nn.Linear(D, H), nn.ReinforceNormal(0.1)), unroll=False)
    seq.forward(np.ones((4, B, D)))
    assert any("REINFORCE" in n for n in seq.compile_report().notes) and not rolled_note(seq)


def test_grad_hidden_state_api_matches_unrolled():
    a, b = twins(CELLS["lstm"][0], seed=13)
    rolled, unrolled = nn.Sequencer(a, unroll=False), nn.Sequencer(b, unroll=True)
    rng = np.random.default_rng(14)
    x, g = rng.standard_normal((6, B, D)), rng.standard_normal((6, B, H))
    gh = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    for seq in (rolled, unrolled):
        seq.forward(x)
        seq.backward(x, g)
    for t in (0, 3, 5):
        for ga, gb in zip(rolled.get_grad_hidden_state(t), unrolled.get_grad_hidden_state(t)):
            np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-13)
    for seq in (rolled, unrolled):
        seq.set_grad_hidden_state(2, gh)
    r, u = run_pair(rolled, unrolled, x, g)
    assert_same(r, u)


def test_display_graph_is_the_unrolled_view():
    a, b = twins(CELLS["gru"][0], seed=15)
    rolled, unrolled = nn.Sequencer(a, unroll=False), nn.Sequencer(b, unroll=True)
    x, g = np.ones((4, B, D)), np.ones((4, B, H))
    for seq in (rolled, unrolled):
        seq.forward(x)
        seq.backward(x, g)
    shown, want = rolled.graph, unrolled.graph
    assert shown.steps() == want.steps() == [0, 1, 2, 3]
    assert shown.op_counts() == want.op_counts() and "scan" not in shown.op_counts()
    assert str(shown) == str(want)


def test_bisequencer_and_repeater_rolled_equal_unrolled():
    tn.manual_seed(16)
    a = nn.BiSequencer(nn.LSTM(D, H), nn.GRU(D, H))
    b = nn.BiSequencer(nn.LSTM(D, H), nn.GRU(D, H))
    b.load_state_dict(a.state_dict())
    a.unroll, b.unroll = False, True
    rng = np.random.default_rng(17)
    x, g = rng.standard_normal((6, B, D)), rng.standard_normal((6, B, 2 * H))
    r, u = run_pair(a, b, x, g)
    assert len(rolled_note(a)) == 3 and not rolled_note(b)  # fwd, bwd (reversed), merge
    assert_same(r, u)
    for name in ("fwd", "bwd"):  # bwd's steps in its own (reversed) order, as unrolled
        ma, mb = a._children[name], b._children[name]
        for t in range(6):
            np.testing.assert_allclose(ma.outputs[t], mb.outputs[t], rtol=1e-12, atol=1e-13)
    c, d = nn.Repeater(nn.RNN(D, H), 5), nn.Repeater(nn.RNN(D, H), 5)
    d.load_state_dict(c.state_dict())
    c.unroll, d.unroll = False, True
    x1, g1 = rng.standard_normal((B, D)), list(rng.standard_normal((5, B, H)))
    r, u = run_pair(c, d, x1, g1)
    assert rolled_note(c) and not rolled_note(d)
    assert_same(r, u)


@pytest.mark.parametrize("seed", range(12))
def test_random_cells_rolled_equal_unrolled_and_numpy(seed):
    case = make_case(seed)
    models = []
    for unroll in (False, True):
        cells = [
            make_cell(c, p, f"FuzzCell{k}") for k, (c, p) in enumerate(zip(case.cells, case.params))
        ]
        inner = cells[0] if len(cells) == 1 else nn.Sequential(*cells)
        models.append(nn.Sequencer(inner, unroll=unroll).astype(case.dtype))
    x, g = case.x.astype(case.dtype), case.seed_grad.astype(case.dtype)
    r, u = run_pair(*models, x, g)
    tol = 1e-12 if case.dtype == np.float64 else 1e-5
    assert_same(r, u, tol)
    want = numpy_outputs(case)
    np.testing.assert_allclose(
        r[0], want, rtol=1e-9 if tol == 1e-12 else 2e-3, atol=1e-9 if tol == 1e-12 else 2e-3
    )
    assert rolled_note(models[0]) or case.T == 1


def test_parameter_gradients_without_the_input_gradient_rolled():
    a, b = twins(CELLS["lstm"][0], seed=18)
    rolled, unrolled = nn.Sequencer(a, unroll=False), nn.Sequencer(b, unroll=True)
    rng = np.random.default_rng(19)
    x, g = rng.standard_normal((5, B, D)), rng.standard_normal((5, B, H))
    for seq in (rolled, unrolled):
        seq.forward(x)
        seq.zero_grad_parameters()
        assert seq.backward(x, g, need_grad_input=False) is None
    assert rolled_note(rolled)
    for k, p in a.named_parameters().items():
        np.testing.assert_allclose(p.grad, b.named_parameters()[k].grad, rtol=1e-12, atol=1e-13)


def test_state_gradient_variants_bind_a_rolled_programs_inputs_by_name():
    """A rolled program binds the initial-state inputs before the parameters (the step traced
    first); the unrolled state-gradient variant after the Linear's: mapped by name, not order."""

    def make(unroll):
        tn.manual_seed(20)
        return nn.Sequencer(nn.Sequential(nn.Linear(D, D), nn.LSTM(D, H)), unroll=unroll)

    a, b = make(False), make(True)
    rng = np.random.default_rng(21)
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    x, g = rng.standard_normal((5, B, D)), rng.standard_normal((5, B, H))
    for m in (a, b):
        m.set_initial_state((h0, c0))
        m.forward(x)
        m.backward(x, g)
    for ga, gb in zip(a.get_grad_hidden_state(1), b.get_grad_hidden_state(1)):
        np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-13)
    gh = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    for m in (a, b):
        m.set_grad_hidden_state(2, gh)
    r, u = run_pair(a, b, x, g)
    assert_same(r, u)
    for ga, gb in zip(a.get_grad_initial_state(), b.get_grad_initial_state()):
        np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-13)


PEELED = {  # model, input is a list, steps peeled before the template
    "recurrent": (lambda: nn.Recurrent(H, nn.Linear(D, H), nn.Linear(H, H), nn.Tanh()), False, 1),
    "normstabilizer": (lambda: nn.Sequential(nn.LSTM(D, H), nn.NormStabilizer(1.0)), False, 1),
    "recursor": (lambda: nn.Recursor(nn.Sequential(nn.LSTM(D, H), nn.Tanh())), False, 0),
    "table_output": (lambda: nn.ConcatTable(nn.Linear(D, H), nn.Tanh()), True, 0),
}


@pytest.mark.parametrize("name", sorted(PEELED))
@pytest.mark.parametrize("train", [True, False])
def test_other_steps_rolled_equal_unrolled(name, train):
    make, as_list, peeled = PEELED[name]
    tn.manual_seed(22)
    a = nn.Sequencer(make(), unroll=False)
    b = nn.Sequencer(make(), unroll=True)
    b.load_state_dict(a.state_dict())
    rng = np.random.default_rng(23)
    x, g = rng.standard_normal((6, B, D)), rng.standard_normal((6, B, H))
    if as_list:
        x, g = list(x), [[gt, np.ones((B, D))] for gt in g]
    outs = []
    for m in (a, b):
        if not train:
            m.evaluate()  # an evaluation forward, then backward (recomputes what it needs)
        m.zero_grad_parameters()
        y, gx = m.forward(x), m.backward(x, g)
        flat = [np.ravel(v) for v in tn.nn.tree.flatten([y, gx])[0]]
        outs.append((np.concatenate(flat), grads_of(m)))
    note = rolled_note(a)
    assert note and f": rolled: {peeled} peeled" in note[0]
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-13)
    for k in outs[0][1]:
        np.testing.assert_allclose(outs[0][1][k], outs[1][1][k], rtol=1e-12, atol=1e-13)


def test_by_default_every_length_runs_rolled_and_a_new_length_does_not_retrace():
    """unroll=None (the default) rolls loops of any length, even 1 or 5 steps: one step
    template serves T = 5, then 1, then 73 without tracing a step again (trace_count 1);
    unroll=True is the unrolled baseline, said so in the report."""
    tn.manual_seed(21)
    seq = nn.Sequencer(nn.LSTM(D, H))
    assert seq.unroll is None
    rng = np.random.default_rng(22)
    for T in (5, 1, 73):
        x = rng.standard_normal((T, B, D))
        y = seq.forward(x)
        seq.backward(x, np.ones_like(y))
        assert y.shape == (T, B, H) and rolled_note(seq), (T, seq.compile_report().notes)
    assert seq.trace_count == 1
    base = nn.Sequencer(nn.LSTM(D, H), unroll=True)
    base.forward(rng.standard_normal((5, B, D)))
    assert not rolled_note(base)
    assert any("unrolled (unroll=True)" in n for n in base.compile_report().notes)
    with pytest.raises(tn.TapernnError, match="unroll must be True or False"):
        nn.Sequencer(nn.LSTM(D, H), unroll="yes")
