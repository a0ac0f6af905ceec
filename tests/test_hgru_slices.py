"""Column slices written `z[..., a:b]` (SeqGRU's step, any custom cell slicing a fused GEMM)
are basic slices to the passes: their per-block gradients become one concat per step
(index_grads_to_concat), not index_grads scattering into zeros and an add_n, inside a loop body
as outside it. Values against the reference interpreter and NumPy equations (complex-step
gradients); the structure of SeqGRU's backward loop body against Sequencer(to_gru())'s."""

import numpy as np
import pytest
from pass_check import assert_same, randn
from seq_reference import complex_step_grads, sigmoid

import tapernn as tn
from tapernn import nn, scan_run
from tapernn import passes as P
from tapernn.graph import Node
from tapernn.passes.concat import basic_ranges

T, B, D, H = 5, 3, 3, 4


def _slice(index, shape):
    base = Node("input", (), {}, shape, np.dtype("float64"))
    return Node("getitem", (base,), {"index": index}, (), np.dtype("float64"))


def test_basic_ranges_reads_an_ellipsis_as_full_slices():
    cols = ("s", 4, 8, None)
    shape = (2, 3, 8)
    assert basic_ranges(_slice((Ellipsis, cols), shape)) == [(0, 2), (0, 3), (4, 8)]
    assert basic_ranges(_slice((("s", 1, 2, None), Ellipsis, cols), shape)) == [
        (1, 2),
        (0, 3),
        (4, 8),
    ]
    assert basic_ranges(_slice((Ellipsis,), shape)) == [(0, 2), (0, 3), (0, 8)]
    # not basic slices: two Ellipses, an integer, a new axis
    assert basic_ranges(_slice((Ellipsis, cols, Ellipsis), shape)) is None
    assert basic_ranges(_slice((Ellipsis, 3), shape)) is None
    assert basic_ranges(_slice((None, Ellipsis, cols), shape)) is None


def test_ellipsis_column_slices_gradients_join_with_one_concat(rng):
    def f(x, w):
        z = x @ w  # (2, 12): three gate blocks of 4 columns, sliced as a cell writes them
        return tn.sum(tn.sigmoid(z[..., :4]) * tn.tanh(z[..., 4:8]) + z[..., 8:] ** 2)

    arrays = [randn(rng, 2, 3), randn(rng, 3, 12)]
    g = tn.grad(tn.trace(f, *arrays))
    assert sum(n.op == "index_grad" for n in g.nodes) == 3
    out = assert_same(g, [P.index_grads_to_concat, P.eliminate_dead_code], arrays)
    counts = out.op_counts()
    assert counts.get("index_grad", 0) == 0 and counts["concat"] == 1, counts


def _loop_bodies(m):
    """{reverse: compiled body graph} of a module's last training step's loops."""
    report = m.compile_report()
    compiled = {id(c): c for d in list(scan_run._BODIES.values()) for c in d.values()}
    return {loop.reverse: compiled[loop.body_key] for loop in report.loops}


def test_seqgru_backward_body_joins_gate_gradients_like_sequencer_gru():
    tn.manual_seed(3)
    seq = nn.SeqGRU(D, H)
    seq.set_plan_options(tn.PlanOptions(backend="numpy"))
    gru = nn.Sequencer(seq.to_gru())
    gru.set_plan_options(tn.PlanOptions(backend="numpy"))
    x = np.random.default_rng(4).standard_normal((T, B, D))
    kernels = []
    for m in (seq, gru):
        y = m.forward(x)
        m.backward(x, np.ones_like(y))
        body = _loop_bodies(m)[True]
        assert not any(n.op == "index_grad" for n in body.graph.nodes), body.graph
        kernels.append(body.report.kernels)
    # (was 17 against 10: the gx / gh slices' five index_grads and their two add_n)
    assert kernels[0] <= kernels[1] + 2, kernels


class SlicedGates(nn.Cell):
    """A custom cell slicing one fused GEMM into two gates with `[..., a:b]`:
    z = x W + h U;  h' = tanh(z[..., :H]) * σ(z[..., H:]) + h / 2."""

    state_names = ("h",)

    def __init__(self, d, h):
        super().__init__(d, h)
        self.parameter("w", (d, 2 * h))
        self.parameter("u", (h, 2 * h))

    def step(self, x, h):
        n = self.hidden_size
        z = x @ self.w + h @ self.u
        return tn.tanh(z[..., :n]) * tn.sigmoid(z[..., n:]) + h * 0.5


def _sliced_gates(w, u, x):
    h, out = np.zeros((x.shape[1], H), dtype=np.result_type(w, u, x)), []
    for t in range(x.shape[0]):
        z = x[t] @ w + h @ u
        h = np.tanh(z[:, :H]) * sigmoid(z[:, H:]) + h * 0.5
        out.append(h)
    return np.stack(out)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_custom_cell_slicing_a_fused_gemm_matches_numpy_equations(backend):
    tn.manual_seed(5)
    cell = SlicedGates(D, H)
    m = nn.Sequencer(cell)
    m.set_plan_options(tn.PlanOptions(backend=backend))
    rng = np.random.default_rng(6)
    x, seed = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    m.zero_grad_parameters()
    y = m.forward(x)
    gx = m.backward(x, seed)
    arrays = {"w": cell.w.data.copy(), "u": cell.u.data.copy(), "x": x}
    np.testing.assert_allclose(y, _sliced_gates(**arrays), rtol=1e-12, atol=1e-14)
    exact = complex_step_grads(_sliced_gates, arrays, seed)
    np.testing.assert_allclose(gx, exact["x"], rtol=1e-12, atol=1e-13)
    for name in ("w", "u"):
        got = getattr(cell, name).grad
        np.testing.assert_allclose(got, exact[name], rtol=1e-12, atol=1e-13, err_msg=name)
    if backend == "numpy":
        body = _loop_bodies(m)[True]
        assert not any(n.op == "index_grad" for n in body.graph.nodes), body.graph
