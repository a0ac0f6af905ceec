"""SeqLSTM, SeqLSTMP and SeqGRU run rolled (the step traced once, one loop at every length):
the report says so and a new T traces no step again; forward, grad_input (initial states
included) and every parameter gradient equal the unroll=True program (1e-12) and the NumPy
equations of tests/seq_reference.py (complex-step gradients), with mask_zero, batch_first and
remembered chunks; the time-batched input projection is outside the loop as for
Sequencer(FastLSTM)."""

import numpy as np
import pytest
from seq_reference import complex_step_grads, seqgru, seqlstm

import tapernn as tn
from tapernn import nn
from tapernn.errors import TapernnError

T, B, D, H, R = 5, 3, 3, 4, 2

MAKERS = {
    "lstm": lambda **kw: nn.SeqLSTM(D, H, **kw),
    "lstmp": lambda **kw: nn.SeqLSTMP(D, H, R, **kw),
    "gru": lambda **kw: nn.SeqGRU(D, H, **kw),
}


def _rolled(m):
    notes = m.compile_report().notes
    return any("rolled: " in n and "unrolled" not in n for n in notes)


def _states(kind, rng):
    """The initial states a forward may take, as Torch7 lists them before x."""
    out_size = R if kind == "lstmp" else H
    if kind == "gru":
        return [rng.standard_normal((B, out_size))]
    return [rng.standard_normal((B, H)), rng.standard_normal((B, out_size))]  # [c0, h0]


def _inputs(seed, masked=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, D))
    if masked:
        x[:2, 0] = 0  # row 0 left-padded
        x[2, 2] = 0  # a zero step mid-sequence
    return x, rng


def _run(m, inp, seed):
    out = m.forward(inp)
    m.zero_grad_parameters()
    gin = m.backward(inp, seed)
    gin = [np.array(g) for g in gin] if isinstance(gin, list) else [np.array(gin)]
    return np.array(out), gin, {k: p.grad.copy() for k, p in m.named_parameters().items()}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_rolled_and_a_new_length_traces_no_step_again(kind):
    tn.manual_seed(1)
    m = MAKERS[kind]()
    rng = np.random.default_rng(2)
    bodies = []
    for steps in (7, 1, 23):
        x = rng.standard_normal((steps, B, D))
        y = m.forward(x)
        m.backward(x, np.ones_like(y))
        assert y.shape[0] == steps and _rolled(m), (steps, m.compile_report().notes)
        bodies += [n.attrs["body"] for n in m._runtime.last.graph.nodes if n.op == "scan"]
    assert m.trace_count == 1
    assert len(bodies) >= 2 and all(b is bodies[0] for b in bodies)  # one body: compiled once


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("batch_first", [False, True])
def test_rolled_equals_unrolled_with_states_and_masks(kind, batch_first):
    tn.manual_seed(3)
    rolled = MAKERS[kind](mask_zero=True, batch_first=batch_first)
    unrolled = MAKERS[kind](mask_zero=True, batch_first=batch_first, unroll=True)
    unrolled.load_state_dict(rolled.state_dict())
    x, rng = _inputs(4)
    x = x.transpose(1, 0, 2).copy() if batch_first else x
    inp = _states(kind, rng) + [x]
    seed = rng.standard_normal(rolled.forward(inp).shape)
    got, want = _run(rolled, inp, seed), _run(unrolled, inp, seed)
    assert _rolled(rolled) and not _rolled(unrolled)
    assert any("unrolled (unroll=True)" in n for n in unrolled.compile_report().notes)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-14)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
    for name in want[2]:
        np.testing.assert_allclose(got[2][name], want[2][name], rtol=1e-12, atol=1e-14)


def _oracle(kind):
    """The module's output as a function of its parameters, x and initial states (NumPy)."""

    def fn(weight, bias, x, h0, c0=None, weight_o=None):
        p = {"weight": weight, "bias": bias}
        if kind == "gru":
            return seqgru(p, x, h0, mask_zero=True)
        if weight_o is not None:
            p["weight_o"] = weight_o
        return seqlstm(p, x, h0, c0, mask_zero=True)

    return fn


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_rolled_matches_numpy_equations(kind):
    tn.manual_seed(5)
    m = MAKERS[kind](mask_zero=True)
    x, rng = _inputs(6)
    states = _states(kind, rng)
    names = ["h0"] if kind == "gru" else ["c0", "h0"]
    arrays = {k: p.data.copy() for k, p in m.named_parameters().items()}
    arrays.update(x=x, **dict(zip(names, states)))
    seed = rng.standard_normal((T, B, R if kind == "lstmp" else H))
    out, gin, grads = _run(m, states + [x], seed)
    assert _rolled(m)
    np.testing.assert_allclose(out, _oracle(kind)(**arrays), rtol=1e-12, atol=1e-14)
    exact = complex_step_grads(_oracle(kind), arrays, seed)
    for name, g in zip(names + ["x"], gin, strict=True):
        np.testing.assert_allclose(g, exact[name], rtol=1e-12, atol=1e-13, err_msg=name)
    for name, g in grads.items():
        np.testing.assert_allclose(g, exact[name], rtol=1e-12, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_remembered_chunks_equal_unrolled_and_gradcheck(kind):
    tn.manual_seed(7)
    rolled, unrolled = MAKERS[kind](), MAKERS[kind](unroll=True)
    unrolled.load_state_dict(rolled.state_dict())
    rolled.remember("both")
    unrolled.remember("both")
    rng = np.random.default_rng(8)
    for steps in (4, 6, 3):  # each chunk starts from the one before's last state
        x = rng.standard_normal((steps, B, D))
        seed = rng.standard_normal((steps, B, R if kind == "lstmp" else H))
        got, want = _run(rolled, x, seed), _run(unrolled, x, seed)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-12, atol=1e-14)
        for name in want[2]:
            np.testing.assert_allclose(got[2][name], want[2][name], rtol=1e-12, atol=1e-14)
    # (the first chunk starts from zeros, the others from a state input: two step signatures,
    # as Sequencer(FastLSTM)'s)
    assert _rolled(rolled) and rolled.trace_count == 2
    fresh = MAKERS[kind]()
    x = rng.standard_normal((T, B, D))
    y = fresh.forward(x)
    assert _rolled(fresh)
    assert tn.testing.gradcheck_module(fresh, nn.MSECriterion(), x, rng.standard_normal(y.shape))


def _matmuls(program):
    """(GEMM shapes outside the loop, GEMM shapes in its body) of a compiled program."""
    outside = sorted(n.shape for n in program.graph.nodes if n.op == "matmul")
    (scan,) = [n for n in program.graph.nodes if n.op == "scan"]
    return outside, sorted(n.shape for n in scan.attrs["body"].nodes if n.op == "matmul")


def test_gemms_leave_the_loop_as_for_sequencer_fastlstm():
    """Forward: x @ W[:D] one GEMM over the (T*B, D) rows before the scan, the body's one GEMM
    the recurrent h @ W[D:]; backward: the body's one GEMM dA_t @ W[D:]^T, the gradients of x
    and of both weight blocks GEMMs over all steps after it -- as Sequencer(FastLSTM)'s."""
    tn.manual_seed(9)
    seq = nn.SeqLSTM(D, H)
    fast = nn.Sequencer(seq.to_fast_lstm())
    x = np.random.default_rng(10).standard_normal((T, B, D))
    got = []
    for m in (seq, fast):
        m.forward(x)
        m.backward(x, np.ones((T, B, H)))
        pair = m._runtime.last.training_pair
        got.append((_matmuls(pair.forward), _matmuls(pair.backward)))
    assert got[0][0] == got[1][0] == ([(T * B, 4 * H)], [(B, 4 * H)]), got
    assert got[0][1][1] == got[1][1][1] == [(B, H)], got
    assert len(got[0][1][0]) == len(got[1][1][0]) == 3, got  # dx, dW_x, dW_h (any layout)


def test_unroll_must_be_a_flag():
    with pytest.raises(TapernnError, match="unroll"):
        nn.SeqGRU(D, H, unroll="yes")


@pytest.mark.parametrize("kind,n_weights", [("gru", 3), ("lstm", 2), ("lstmp", 3)])
def test_no_weight_gradient_is_summed_inside_the_backward_loop(kind, n_weights):
    """The backward body's GEMMs: the recurrent ones only (as many as the forward body's);
    after the loop one per weight block (GRU: W_x, W_h[r, u], W_h[ĥ]; LSTMP: W_x, W_h, W_O)
    and dx."""
    tn.manual_seed(11)
    m = MAKERS[kind]()
    x = np.random.default_rng(12).standard_normal((T, B, D))
    y = m.forward(x)
    m.backward(x, np.ones_like(y))
    pair = m._runtime.last.training_pair
    (_, fw_inside), (bw_outside, bw_inside) = _matmuls(pair.forward), _matmuls(pair.backward)
    assert len(bw_inside) == len(fw_inside) and len(bw_outside) == n_weights + 1, (
        fw_inside,
        bw_outside,
        bw_inside,
    )
