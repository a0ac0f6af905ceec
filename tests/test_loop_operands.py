"""contiguous_loop_weights (passes/loop_operands.py, issue 19): a rolled loop's transposed weight
reaches the body's matmul as a C-contiguous copy made once per call (an NN GEMM per step);
results equal the NumPy equations and the unrolled program without passes at 1e-12 (float64)."""

import numpy as np
import pytest
from cell_reference import fastlstm_step, gru_step, lstm_step, run

import tapernn as tn
from tapernn import nn, passes
from tapernn.interpret import interpret
from tapernn.passes import loop_operands

D, H, B, T = 3, 5, 2, 6

CELLS = {
    "fastlstm": (lambda d, h: nn.FastLSTM(d, h), fastlstm_step, 2),
    "lstm": (lambda d, h: nn.LSTM(d, h), lstm_step, 2),
    "gru": (lambda d, h: nn.GRU(d, h), gru_step, 1),
}


def step_result(m, x, g):
    m.zero_grad_parameters()
    y = np.array(m.forward(x))
    gx = np.array(m.backward(x, g))
    return [y, gx] + [p.grad.copy() for p in m.parameters()]


def forward_scan(m):
    graph = m._runtime.last.training_pair.forward.graph
    return next(n for n in graph.nodes if n.op == "scan")


def invariant_ops(scan):
    first = scan.attrs["n_carry"] + scan.attrs["n_xs"]
    return [i.op for i in scan.inputs[first:]]


def test_large_recurrent_weight_reaches_the_loop_contiguous(rng):
    """H = 128: U^T is (128, 512), 65536 elements: copied once, the step GEMM reads the copy
    (for OpenBLAS: a weight the numba backend packs is packed from the view, test_packed_honest)."""
    h = 128
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(4, h)).set_plan_options(tn.PlanOptions(packed_gemm=False))
    step_result(m, rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, h)))
    scan = forward_scan(m)
    assert "transpose_copy" in invariant_ops(scan)
    assert "transpose" not in invariant_ops(scan)
    copy = next(i for i in scan.inputs if i.op == "transpose_copy")
    assert copy.shape == (h, 4 * h) and copy.inputs[0].shape == (4 * h, h)
    assert "contiguous_loop_weights" in [r.name for r in m.compile_report().passes]


def test_small_weights_keep_the_view(rng):
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(D, H))
    step_result(m, rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H)))
    ops = invariant_ops(forward_scan(m))
    assert "transpose" in ops and "transpose_copy" not in ops


@pytest.mark.parametrize("name", sorted(CELLS))
def test_copied_weights_equal_numpy_and_the_unrolled_program(name, backend, rng, monkeypatch):
    monkeypatch.setattr(loop_operands, "MIN_ELEMENTS", 0)  # every transposed weight is copied
    make, step, n_states = CELLS[name]
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    tn.manual_seed(0)
    ref = nn.Sequencer(make(D, H), unroll=True).set_passes([])
    want = step_result(ref, x, g)
    tn.manual_seed(0)
    m = nn.Sequencer(make(D, H))
    got = step_result(m, x, g)
    assert "transpose_copy" in invariant_ops(forward_scan(m))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    params = {k.split(".", 1)[1]: p.data for k, p in ref.named_parameters().items()}
    eq, _ = run(step, params, x, n_states, H)
    np.testing.assert_allclose(got[0], eq, rtol=1e-12, atol=1e-12)
    # the second call reuses the copy's buffer: the weights changed, the copy follows
    for p in m.parameters():
        p.data[...] += 0.01
    for p in ref.parameters():
        p.data[...] += 0.01
    for a, b in zip(step_result(m, x, g), step_result(ref, x, g)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_float32_with_the_copy_equals_float64(rng, monkeypatch):
    monkeypatch.setattr(loop_operands, "MIN_ELEMENTS", 0)
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    tn.manual_seed(0)
    m64 = nn.Sequencer(nn.FastLSTM(D, H))
    tn.manual_seed(0)
    m32 = nn.Sequencer(nn.FastLSTM(D, H)).astype(np.float32)
    got = step_result(m32, x.astype(np.float32), g.astype(np.float32))
    assert "transpose_copy" in invariant_ops(forward_scan(m32))
    for a, b in zip(got, step_result(m64, x, g)):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_tn_compile_of_a_scan_reading_a_transposed_weight(monkeypatch):
    """A plain tn.compile of a user scan h_{t+1} = tanh(x_t + h_t @ W^T) against interpret."""
    monkeypatch.setattr(loop_operands, "MIN_ELEMENTS", 0)
    rng = np.random.default_rng(3)
    h0, xs, w = (
        rng.standard_normal((2, 4)),
        rng.standard_normal((5, 2, 4)),
        rng.standard_normal((4, 4)),
    )
    body = tn.trace(lambda h, x, wt: [tn.tanh(x + h @ wt)] * 2, h0, xs[0], w.T)

    def f(h0, xs, w):
        r = tn.scan(body, [h0], [xs], [w.T])
        return r.carries + r.ys

    graph = tn.trace(f, h0, xs, w)
    compiled = tn.compile(graph)
    scan = next(n for n in compiled.graph.nodes if n.op == "scan")
    assert "transpose_copy" in invariant_ops(scan)
    want = interpret(graph, h0, xs, w)
    for a, b in zip(compiled(h0, xs, w), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_transpose_copy_forward_tiles():
    """Above the tile threshold the copy runs tile by tile, also over ragged edges."""
    from tapernn.ops.registry import get_op

    fwd = get_op("transpose_copy").forward
    for shape in [(3, 4), (300, 257), (257, 300), (33, 2049)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        out = np.full(shape[::-1], np.nan, np.float32)
        assert fwd(x, out=out) is out
        np.testing.assert_array_equal(out, x.T)
        assert fwd(x).flags.c_contiguous


def test_pass_is_in_default():
    assert passes.contiguous_loop_weights in passes.DEFAULT
