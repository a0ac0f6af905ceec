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


def test_seqgru_forward_body_adds_its_gate_xs_once():
    """merge_gate_xs: the r and u xs, added to column blocks of ONE h @ W_h[r, u], become one
    xs (a view of the input projection), one add and one sigmoid over 2H columns a step -- the
    forward body of Sequencer(to_gru()), whose per-gate products gate fusion joins."""
    tn.manual_seed(13)
    seq = nn.SeqGRU(D, H)
    seq.set_plan_options(tn.PlanOptions(backend="numpy"))
    gru = nn.Sequencer(seq.to_gru())
    gru.set_plan_options(tn.PlanOptions(backend="numpy"))
    x = np.random.default_rng(14).standard_normal((T, B, D))
    found = []
    for m in (seq, gru):
        m.forward(x)
        (scan,) = [n for n in m._runtime.last.training_pair.forward.graph.nodes if n.op == "scan"]
        body = _loop_bodies(m)[False]
        found.append((scan.attrs["n_xs"], body.report.kernels, body.graph.op_counts()))
    assert found[0] == found[1], found  # (was 3 xs, 11 kernels: two adds, two sigmoids)
    assert found[0][0] == 2, found


class BlockGates(nn.Cell):
    """Per-gate input products added to column blocks of one recurrent product (`gap`: the
    second block starts H columns later -- blocks not adjacent, their xs stay apart):
    g = h U;  h' = σ(x W_a + g[..., :H]) * tanh(x W_b + g[..., s:s+H]),  s = H (+ H if gap)."""

    state_names = ("h",)

    def __init__(self, d, h, gap):
        super().__init__(d, h)
        self.gap = gap
        self.parameter("wa", (d, h))
        self.parameter("wb", (d, h))
        self.parameter("u", (h, (3 if gap else 2) * h))

    def step(self, x, h):
        n = self.hidden_size
        s = 2 * n if self.gap else n
        g = h @ self.u
        return tn.sigmoid(x @ self.wa + g[..., :n]) * tn.tanh(x @ self.wb + g[..., s : s + n])


def _block_gates(gap):
    def fn(wa, wb, u, x):
        s = 2 * H if gap else H
        h, out = np.zeros((x.shape[1], H), dtype=np.result_type(wa, u, x)), []
        for t in range(x.shape[0]):
            g = h @ u
            h = sigmoid(x[t] @ wa + g[:, :H]) * np.tanh(x[t] @ wb + g[:, s : s + H])
            out.append(h)
        return np.stack(out)

    return fn


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("gap", [False, True])
def test_xs_added_to_column_blocks_of_one_product(backend, gap):
    """merge_gate_xs merges the xs of adjacent column blocks only; values against the NumPy
    equations (complex-step gradients) either way."""
    tn.manual_seed(15)
    cell = BlockGates(D, H, gap)
    m = nn.Sequencer(cell)
    m.set_plan_options(tn.PlanOptions(backend=backend))
    rng = np.random.default_rng(16)
    x, seed = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    m.zero_grad_parameters()
    y = m.forward(x)
    gx = m.backward(x, seed)
    names = ("wa", "wb", "u")
    arrays = {k: getattr(cell, k).data.copy() for k in names} | {"x": x}
    np.testing.assert_allclose(y, _block_gates(gap)(**arrays), rtol=1e-12, atol=1e-14)
    exact = complex_step_grads(_block_gates(gap), arrays, seed)
    np.testing.assert_allclose(gx, exact["x"], rtol=1e-12, atol=1e-13)
    for name in names:
        got = getattr(cell, name).grad
        np.testing.assert_allclose(got, exact[name], rtol=1e-12, atol=1e-13, err_msg=name)
    (scan,) = [n for n in m._runtime.last.training_pair.forward.graph.nodes if n.op == "scan"]
    assert scan.attrs["n_xs"] == (2 if gap else 1)


def _reverse_ys(m):
    bw = m._runtime.last.training_pair.last_backward
    (s,) = [n for n in bw.graph.nodes if n.op == "scan"]
    return [o.shape for o in s.attrs["body"].outputs[s.attrs["n_carry"] :]]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_seqgru_backward_writes_gate_gradients_once(backend):
    """share_ys_columns: the reverse loop's ys [dz_r dz_u] (for W_h[r, u]'s gradient) and dz_c
    (for W_h[c]'s) are columns of the ys [dz_r dz_u dz_c] (for W_x's, the bias's and dx):
    not written again each step, read from its stack after the loop; the values as the NumPy
    equations' (test_hseq_roll) and as the pipeline without the pass."""
    tn.manual_seed(17)
    m = nn.SeqGRU(D, H)
    without = nn.SeqGRU(D, H)
    without.load_state_dict(m.state_dict())
    without.set_passes([p for p in P.DEFAULT if p is not P.share_ys_columns])
    rng = np.random.default_rng(18)
    x, seed = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    got = []
    for mod in (m, without):
        mod.set_plan_options(tn.PlanOptions(backend=backend))
        mod.zero_grad_parameters()
        y = mod.forward(x)
        got.append((y, mod.backward(x, seed), mod.weight.grad.copy(), mod.bias.grad.copy()))
    for a, b in zip(*got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # (was four ys: [dz_r dz_u dz_c], [dz_r dz_u], r * h, dz_c)
    assert _reverse_ys(m) == [(B, 3 * H), (B, H)], _reverse_ys(m)
    assert len(_reverse_ys(without)) == 4, _reverse_ys(without)


@pytest.mark.parametrize("tiles", [True, False])
def test_weight_gradient_of_row_and_column_blocks_is_nested_concats(rng, tiles):
    """SeqGRU's weight is read as W[:D], W[D:, :2H], W[D:, 2H:]: its gradient, three scatters
    into zeros and an add_n, becomes concat([dW_x, concat([dW_ru, dW_c], 1)], 0); blocks that
    do not tile the weight (W[D+1:, 2H:]: a row of it unread) stay scatters."""

    def f(x, h, w):
        c = h @ w[3:, 8:] if tiles else h[:, 1:] @ w[4:, 8:]
        return tn.sum(tn.tanh(x @ w[:3])) + tn.sum((h @ w[3:, :8]) ** 2) + tn.sum(c * c * c)

    arrays = [randn(rng, 2, 3), randn(rng, 2, 4), randn(rng, 7, 12)]
    g = tn.grad(tn.trace(f, *arrays))
    before = g.op_counts()["index_grad"]
    out = assert_same(g, [P.index_grads_to_concat, P.eliminate_dead_code], arrays)
    counts = out.op_counts()
    if tiles:
        assert before == 3 and counts.get("index_grad", 0) == 0, counts
        assert counts["concat"] == 2, counts
    else:
        assert counts["index_grad"] == before, counts


def test_seqgru_weight_gradient_is_joined_by_concats():
    tn.manual_seed(19)
    m = nn.SeqGRU(D, H)
    m.set_plan_options(tn.PlanOptions(backend="numpy"))
    x = np.random.default_rng(20).standard_normal((T, B, D))
    y = m.forward(x)
    m.backward(x, np.ones_like(y))
    counts = m._runtime.last.training_pair.last_backward.graph.op_counts()
    assert counts.get("index_grad", 0) == 0, counts  # (was 3 and an add_n)
