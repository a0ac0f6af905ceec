"""Dropout (and drawn inputs) inside rolled loops (nn.rolled, nn.step_draws): the masks are
per-step inputs of the scan, drawn at bind in the unrolled program's order -- rolled ==
unroll=True for the same seed (values and gradients, float64 and float32, both backends, a
reverse loop), the stream the same as per-step draws of NumPy's generator (what the unrolled
program drew before loops held masks), fresh masks every call on the steady path, a new length
without tracing a step again. Cost: ~8 s with numba's kernels cached; ~2 min on a cold kernel
cache under load 11-14 (the numba arms: rolled and unrolled programs, a BiSequencer, one FastLSTM
256 training pair)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_missing
from tapernn.nn.context import current_build

T, B, D, H = 5, 3, 4, 6

NUMBA = pytest.mark.skipif(bool(numba_missing()), reason="no numba")
BACKENDS = ["numpy", pytest.param("numba", marks=NUMBA)]


def rolled(model) -> bool:
    return any(": rolled:" in n for n in model.compile_report().notes)


def stacked(unroll, rng=None, dtype=np.float64):
    """The char-LM stack (Zaremba et al.): LSTM, Dropout, LSTM, Dropout in one step."""
    tn.manual_seed(3)
    cell = nn.Sequential(nn.LSTM(D, H), nn.Dropout(0.5, rng=rng), nn.LSTM(H, H), nn.Dropout(0.25))
    return nn.Sequencer(cell, unroll=unroll).astype(dtype)


def train_calls(model, xs, seed=11, backend="numpy"):
    """Outputs, input gradients and parameter gradients of training calls on `xs`."""
    model.set_plan_options(tn.PlanOptions(backend=backend))
    tn.manual_seed(seed)
    got = []
    for x in xs:
        y = model.forward(x)
        model.zero_grad_parameters()
        gx = model.backward(x, np.cos(np.asarray(y)))
        got.append([np.array(y), np.array(gx)] + [p.grad.copy() for p in model.parameters()])
    return got


def assert_same(a, b, tol):
    for k, (u, v) in enumerate(zip(a, b)):
        for j, (p, q) in enumerate(zip(u, v)):
            np.testing.assert_allclose(p, q, rtol=tol, atol=tol, err_msg=f"call {k}, array {j}")


def test_a_block_draw_is_the_per_step_draws_in_order():
    # (nn.step_draws draws a loop's masks as one (n, entries) block per generator: checked
    # here for NumPy's bit generators, not assumed)
    for bits in (np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64):
        a, b = np.random.Generator(bits(4)), np.random.Generator(bits(4))
        block = a.random((7, 2 * 3 + 5))
        steps = [np.concatenate([b.random((2, 3)).ravel(), b.random(5)]) for _ in range(7)]
        np.testing.assert_array_equal(block, np.stack(steps), err_msg=bits.__name__)


@pytest.mark.parametrize(  # (not float32 on numba too: ~50 s more on a cold kernel cache)
    "backend, dtype",
    [("numpy", np.float64), ("numpy", np.float32), pytest.param("numba", np.float64, marks=NUMBA)],
)
def test_rolled_equals_unrolled_for_the_same_seed(backend, dtype):
    xs = [np.random.default_rng(k).standard_normal((t, B, D)) for k, t in enumerate((T, T, 8))]
    own = np.random.default_rng(9)  # one Dropout draws from its own generator
    a = stacked(False, own, dtype)
    r = train_calls(a, xs, backend=backend)
    assert rolled(a) and a._runtime.last.compile_training().forward.program.backend == backend
    own = np.random.default_rng(9)
    b = stacked(True, own, dtype)
    u = train_calls(b, xs, backend=backend)
    assert not rolled(b)
    assert_same(r, u, 1e-12 if dtype == np.float64 else 1e-5)


def test_the_masks_are_numpys_per_step_draws():
    # the stream a seed gives (the unrolled program's, before loops held masks): step by step,
    # Dropout(0.5) then Dropout(0.25) in each step, both from tapernn's generator; a Dropout
    # right after the LSTM shows its mask (training output / evaluation output)
    tn.manual_seed(3)
    lstm, lin = nn.LSTM(D, H), nn.Linear(H, H)
    seq = nn.Sequencer(nn.Sequential(lstm, nn.Dropout(0.5), lin, nn.Dropout(0.25)))
    x = np.random.default_rng(0).standard_normal((T, B, D))
    seq.evaluate()
    h = _lstm_outputs(seq, x)
    seq.training()
    tn.manual_seed(21)
    draws = np.random.default_rng(21)
    for call in range(3):  # (the steady path from the second call: fresh masks every call)
        y = seq.forward(x)
        want = np.empty((T, B, H))
        for t in range(T):
            m1 = (draws.random((B, H)) >= 0.5) * 2.0
            m2 = (draws.random((B, H)) >= 0.25) / 0.75
            want[t] = ((h[t] * m1) @ lin.weight.data.T + lin.bias.data) * m2
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12, err_msg=f"call {call}")
        seq.backward(x, np.ones_like(y))
    assert rolled(seq) and seq._runtime.steady is not None


def _lstm_outputs(seq, x):
    """The LSTM's outputs per step (evaluation: Dropout is the identity, the Linear inverted)."""
    lin = seq.module.get(2)
    y = np.array(seq.forward(x))
    return (y - lin.bias.data) @ np.linalg.inv(lin.weight.data.T)


def test_backward_reuses_the_forwards_masks():
    # Sequencer(Dropout): y = x * m, dy/dx = m -- the forward's masks, not fresh ones
    seq = nn.Sequencer(nn.Dropout(0.4))
    x = np.random.default_rng(1).standard_normal((T, B, D)) + 3.0
    tn.manual_seed(2)
    for _ in range(2):
        y = seq.forward(x)
        np.testing.assert_allclose(seq.backward(x, np.ones_like(x)), y / x, rtol=1e-14)
    assert rolled(seq)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reverse_loop_draws_its_positions_backwards(backend):
    # BiSequencer: fwd's loop over positions 0..T-1, then bwd's over T-1..0 (the unrolled
    # program's draw order), each step with a Dropout
    def make(unroll):
        tn.manual_seed(4)
        fwd = nn.Sequential(nn.Dropout(0.5), nn.GRU(D, H))
        bwd = nn.Sequential(nn.GRU(D, H), nn.Dropout(0.3))
        return nn.BiSequencer(fwd, bwd, unroll=unroll)

    xs = [np.random.default_rng(k).standard_normal((T, B, D)) for k in range(2)]
    a, b = make(False), make(True)
    r, u = train_calls(a, xs, backend=backend), train_calls(b, xs, backend=backend)
    assert rolled(a) and not rolled(b)
    assert_same(r, u, 1e-12)


def test_a_new_length_traces_no_step_and_remember_carries_across_calls():
    a, b = stacked(False).remember("both"), stacked(True).remember("both")
    xs = [np.random.default_rng(k).standard_normal((t, B, D)) for k, t in enumerate((6, 9, 4, 9))]
    r = train_calls(a, xs)
    # steps traced twice: from zeros, then from a remembered state; the other lengths
    # re-emitted the remembered state's template
    assert a.trace_count == 2
    bodies = {id(n.attrs["body"]) for n in a._runtime.last.graph.nodes if n.op == "scan"}
    assert len(bodies) == 1
    assert_same(r, train_calls(b, xs), 1e-12)
    a.forget(), b.forget()
    assert_same(train_calls(a, xs[:1], seed=5), train_calls(b, xs[:1], seed=5), 1e-12)


def test_evaluation_draws_nothing():
    seq = stacked(False)
    seq.evaluate()
    x = np.random.default_rng(0).standard_normal((T, B, D))
    tn.manual_seed(1)
    seq.forward(x)
    assert not [n for n in seq._runtime.last.graph.inputs if n.kind == "random"]
    assert tn.random.generator().random() == np.random.default_rng(1).random()  # none drawn


def test_the_tutorials_stacked_lstms_with_dropout_between_layers():
    def make(unroll):
        tn.manual_seed(6)
        m = nn.Sequential(nn.SplitTable(0, 3))
        m.add(nn.Sequencer(nn.LSTM(D, H), unroll=unroll))
        m.add(nn.Sequencer(nn.Dropout(0.5), unroll=unroll))
        return m.add(nn.Sequencer(nn.LSTM(H, H), unroll=unroll))

    x = np.random.default_rng(0).standard_normal((T, B, D))
    out = []
    for unroll in (False, True):
        m = make(unroll)
        tn.manual_seed(8)
        y = m.forward(x)
        gx = m.backward(x, [np.ones((B, H))] * T)
        out.append((np.stack(y), np.array(gx), [p.grad.copy() for p in m.parameters()]))
        assert rolled(m) != unroll
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-12, atol=1e-12)
    for p, q in zip(out[0][2], out[1][2]):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)


class Noisy(nn.Module):
    """x + noise, the noise a fresh draw per call (BuildContext.random_input)."""

    def __init__(self, rng):
        super().__init__()
        self.rng = rng

    def build(self, x):
        draw = lambda: self.rng.standard_normal(x.shape)
        return x + current_build().random_input(x.shape, x.dtype, draw, "noise")


def test_drawn_inputs_roll_in_the_unrolled_order():
    def make(unroll):
        tn.manual_seed(2)
        step = nn.Sequential(Noisy(np.random.default_rng(5)), nn.Dropout(0.5), nn.RNN(D, H))
        return nn.Sequencer(step, unroll=unroll)

    xs = [np.random.default_rng(k).standard_normal((T, B, D)) for k in range(2)]
    a, b = make(False), make(True)
    r, u = train_calls(a, xs), train_calls(b, xs)
    assert rolled(a) and not rolled(b)
    assert_same(r, u, 1e-12)


def test_stochastic_reinforce_normal_in_evaluation_rolls():
    # evaluation with stochastic=True draws its noise (BuildContext.random_input) and seeds no
    # REINFORCE choice: rolled, the unrolled program's noise
    def make(unroll):
        tn.manual_seed(2)
        step = nn.Sequential(nn.Linear(D, H), nn.ReinforceNormal(0.1, stochastic=True))
        return nn.Sequencer(step, unroll=unroll).evaluate()

    x = np.random.default_rng(0).standard_normal((T, B, D))
    out = []
    for unroll in (False, True):
        m = make(unroll)
        tn.manual_seed(3)
        out.append([np.array(m.forward(x)), np.array(m.forward(x))])
        assert rolled(m) != unroll
    np.testing.assert_allclose(out[0], out[1], rtol=1e-12, atol=1e-12)


def test_the_unrolled_view_shows_a_mask_per_step():
    seq = stacked(False)
    seq.forward(np.zeros((T, B, D)))
    masks = [n for n in seq.graph.inputs if n.kind == "random"]
    assert rolled(seq) and len(masks) == 2 * T and {n.step for n in masks} == set(range(T))


def test_gradcheck_through_a_rolled_dropout():
    seq = nn.Sequencer(nn.Sequential(nn.Dropout(0.3), nn.RNN(D, H), nn.Dropout(0.3)))
    x = np.random.default_rng(0).standard_normal((T, B, D))
    target = np.random.default_rng(1).standard_normal((T, B, H))
    assert tn.testing.gradcheck_module(seq, nn.MSECriterion(), x, target)
    assert rolled(seq)


def test_grad_hidden_state_reruns_the_rolled_calls_masks():
    # set_grad_hidden_state runs an unrolled variant program with the call's own arguments: a
    # rolled call's (n, ...) mask blocks handed to it step by step (nn.step_draws.per_step)
    x = np.random.default_rng(0).standard_normal((T, B, D))
    gh = tuple(np.random.default_rng(k).standard_normal((B, H)) for k in (1, 2))
    out = []
    for unroll in (False, True):
        seq = stacked(unroll)
        tn.manual_seed(7)
        y = seq.forward(x)
        first = seq.module.get(0)
        first.set_grad_hidden_state(2, gh)
        gx = seq.backward(x, np.ones_like(y))
        got = [np.array(y), np.array(gx)] + [p.grad.copy() for p in seq.parameters()]
        out.append(got + list(first.get_grad_hidden_state(1)))
        assert rolled(seq) != unroll
    assert_same([out[0]], [out[1]], 1e-12)


@pytest.mark.skipif(bool(numba_missing()), reason="no numba")
def test_auto_reaches_numbas_plan_with_the_numpy_backends_masks(monkeypatch):
    # a rolled step with Dropout is a loop: "auto" gets its two plans (numba's traced at call
    # 2, run from call 4 here), the masks the NumPy backend's across the switch (cost: one
    # FastLSTM 256 training pair for numba, seconds cold)
    from tapernn import backends

    monkeypatch.setenv("TAPERNN_AUTO_PLANS", "2,4")
    monkeypatch.setattr(backends, "_chosen", "auto")
    h = 256  # (a step's gates: 8 x 4h = 8192 elements, auto_plans.MIN_ELEMENTS)

    def make(backend=""):
        tn.manual_seed(0)
        drop = nn.Dropout(0.3, rng=np.random.default_rng(5))  # (each model its own stream)
        m = nn.Sequencer(nn.Sequential(nn.FastLSTM(h, h), drop))
        return m.set_plan_options(tn.PlanOptions(backend=backend)) if backend else m

    two, ref = make(), make("numpy")
    ran = []
    for k in range(6):
        x = np.random.default_rng(k).standard_normal((3, 8, h))
        for m in (two, ref):
            m.forward(x)
            m.zero_grad_parameters()
            m.backward(x, np.cos(m.output))
        ran.append(two._runtime.last.compile_training().forward.program.backend)
        for u, v in zip(arrays(two), arrays(ref)):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12, err_msg=f"call {k}")
    assert rolled(two) and ran == ["numpy"] * 3 + ["numba"] * 3


def arrays(m):
    return [m.output, m.grad_input] + [p.grad for p in m.parameters()]


class WithTargets(nn.Module):
    """x -> [x, fixed target ids]: an NCEModule inside a step over an array input."""

    def build(self, x):
        return [x, current_build().tape.constant(np.arange(x.shape[0]) % 7)]


def test_an_nce_module_in_a_step_runs_unrolled_and_says_why():
    # NCEModule estimates Z once per forward at its first step (later steps reuse it): a
    # step traced alone would estimate it at every step (rolled, the write-back of Z failed)
    def make(unroll):
        tn.manual_seed(0)
        nce = nn.NCEModule(D, 7, 3, np.full(7, 1 / 7), z=0.0)
        step = nn.Sequential(WithTargets(), nce, nn.SelectTable(1))
        return nn.Sequencer(step, unroll=unroll)

    x = np.random.default_rng(0).standard_normal((T, B, D)) * np.arange(1, T + 1)[:, None, None]
    out = []
    for unroll in (False, True):
        m = make(unroll)
        tn.manual_seed(1)
        out.append((np.array(m.forward(x)), m.module.get(1).z))
        notes = m.compile_report().notes
        assert unroll or any("unrolled (NCEModule estimates Z" in n for n in notes)
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12, atol=1e-12)
    assert out[0][1] == out[1][1] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_compiled_loop_with_masks_is_the_reference_interpreters(backend):
    # the rolled program's forward on its own bound arguments (masks included) against
    # tapernn.interpret, which runs the scan's body op by op with NumPy
    from tapernn.interpret import interpret

    seq = stacked(False)
    seq.set_plan_options(tn.PlanOptions(backend=backend))
    x = np.random.default_rng(0).standard_normal((T, B, D))
    seq.forward(x)
    exe = seq._runtime.last
    args = exe.bind([x])
    assert [a.shape for a, n in zip(args, exe.arg_nodes) if n.kind == "random"] == [(T, B, H)] * 2
    got = exe.compile_forward().run(args)
    want = interpret(exe.packing.rewrite(exe.graph), *args)  # (parameter blocks as bound)
    assert exe.compile_forward().program.backend == backend
    for u, v in zip(got, want):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
