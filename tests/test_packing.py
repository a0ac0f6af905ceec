"""Parameter blocks (nn.packing): layout, the programs reading and writing whole blocks, and
the fallbacks when a user rebinds a member -- results never depend on whether a block is used."""

import copy

import numpy as np
import pytest
from cell_reference import lstm_step, run

import tapernn as tn
from tapernn import nn
from tapernn import passes as P
from tapernn.interpret import interpret

T, B, D, H = 4, 2, 3, 5


def _rows_of(p):
    blk = p._block
    assert blk is not None and blk.intact
    a, b = blk.rows[blk.members.index(p)]
    assert np.shares_memory(p.data, blk.data) and np.shares_memory(p.grad, blk.grad)
    assert p.data.base is blk.data and p.data.ctypes.data == blk.data[a:b].ctypes.data
    return blk, (a, b)


def test_lstm_parameters_are_rows_of_three_blocks_in_gate_order():
    cell = nn.LSTM(D, H)
    blocks = {}
    for name, p in cell.named_parameters().items():
        blk, rows = _rows_of(p)
        blocks.setdefault(id(blk), []).append((rows, name))
    layout = sorted(sorted(v) for v in blocks.values())
    assert [[name for _, name in v] for v in layout] == [
        ["b_i", "b_f", "b_g", "b_o", "p_i", "p_f", "p_o"],
        ["w_hi", "w_hf", "w_hg", "w_ho"],
        ["w_xi", "w_xf", "w_xg", "w_xo"],
    ]
    assert cell.w_xi._block.data.shape == (4 * H, D)
    # D == H: the input and recurrent weights share one trailing shape, so one block
    square = nn.LSTM(H, H, peephole=False)
    assert square.w_xi._block is square.w_ho._block and square.w_xi._block.data.shape == (8 * H, H)


def test_modules_without_same_shaped_parameters_have_no_blocks():
    fast = nn.FastLSTM(D, H)  # weight (4H, D) and bias (4H,): nothing to share a block with
    assert all(p._block is None for p in fast.parameters())
    gru = nn.GRU(D, H, reset_after=True)
    assert gru.b_hn._block is gru.b_r._block and gru.b_r._block.data.shape == (4 * H,)


def _lstm_model(seed=0):
    tn.manual_seed(seed)
    m = nn.Sequencer(nn.LSTM(D, H, peephole=False), unroll=True)  # its blocks, unrolled
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(k).standard_normal(p.data.shape) * 0.4
    return m


def _step(m, x, g):
    y = np.array(m.forward(x))
    gx = np.array(m.backward(x, g))
    return [y, gx] + [p.grad.copy() for p in m.parameters()]


def test_lstm_programs_read_and_write_whole_blocks():
    m = _lstm_model()
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    m.zero_grad_parameters()
    _step(m, x, g)
    pair = m._runtime.last.training_pair
    fwd, bwd = pair.forward.graph, pair.backward.graph
    params = [n for n in fwd.inputs if n.attrs.get("kind") == "param"]
    assert sorted(n.shape for n in params) == [(4 * H,), (4 * H, D), (4 * H, H)]
    # the weight concats gate fusion builds are the blocks themselves: no copy per call
    concats = [n for n in fwd.nodes if n.op == "concat"]
    assert concats and not any(_reads_param(i) for n in concats for i in n.inputs)
    assert "np_concatenate((a" not in pair.forward.source
    # one gradient per block (plus the input's), each a view of one product, no per-gate slices
    assert len(bwd.outputs) == 1 + 3
    assert sorted(o.shape for o in bwd.outputs[1:]) == [(4 * H,), (4 * H, D), (4 * H, H)]
    for o in bwd.outputs[1:]:
        assert o.op != "concat"
    # and the values are the Element-Research equations'
    params_np = {k: p.data.copy() for k, p in m.modules().__next__().named_parameters().items()}
    params_np = {k.split(".", 1)[1]: v for k, v in params_np.items()}
    expected, _ = run(lambda p, x, h, c: lstm_step(p, x, h, c, peephole=False), params_np, x, 2, H)
    np.testing.assert_allclose(m.output, expected, rtol=1e-12, atol=1e-13)


def _reads_param(n):
    while n.op in ("getitem", "transpose", "reshape"):
        n = n.inputs[0]
    return n.op == "input" and n.attrs.get("kind") == "param"


def test_rebinding_a_member_falls_back_to_copies_and_stays_exact():
    a, b = _lstm_model(), _lstm_model()
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    for m in (a, b):
        m.zero_grad_parameters()
        _step(m, x, g)
    cell_a, cell_b = a.module, b.module
    new = cell_b.w_xf.data * 2 + 0.1
    cell_a.w_xf.data[...] = new  # in place: the block stays
    cell_b.w_xf.data = new  # rebound: the block is broken, the user's array is the parameter
    assert cell_a.w_xf._block.intact and not cell_b.w_xi._block.intact
    assert cell_b.w_xf._block is None and cell_b.w_xf.data is new
    grad = np.full_like(cell_b.b_o.grad, 7.0)
    cell_b.b_o.grad = grad  # a rebound gradient array receives its gradient too
    cell_a.b_o.grad[...] = 7.0
    for m in (a, b):
        for p in m.parameters():
            if p is not cell_a.b_o and p is not cell_b.b_o:
                p.grad[...] = 0
    ra, rb = _step(a, x, g), _step(b, x, g)
    for u, v in zip(ra, rb):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-13)
    assert cell_b.b_o.grad is grad and not np.allclose(grad, 7.0)
    # update and zero_grad reach the loose member and the broken block's members
    for m in (a, b):
        m.update_parameters(0.1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(pb.data, pa.data, rtol=1e-12, atol=1e-13)
    b.zero_grad_parameters()
    assert all(not p.grad.any() for p in b.parameters()) and not grad.any()
    # flatten_parameters restores the blocks from the current arrays
    b.flatten_parameters()
    blk, _ = _rows_of(cell_b.w_xf)
    assert blk is cell_b.w_xi._block and cell_b.w_xf.data is not new
    np.testing.assert_array_equal(cell_b.w_xf.data, cell_a.w_xf.data)
    a.zero_grad_parameters()
    for u, v in zip(_step(a, x, g), _step(b, x, g)):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-13)


class _Uses(nn.Module):  # borrows one member of another module's block
    def __init__(self, w):
        super().__init__()
        self.w = w


def test_zero_grad_and_update_touch_only_the_modules_own_parameters():
    lstm = nn.LSTM(D, H, peephole=False)
    other = _Uses(lstm.w_xi)
    for p in lstm.parameters():
        p.grad[...] = 1.0
    before = {k: p.data.copy() for k, p in lstm.named_parameters().items()}
    other.update_parameters(0.5)
    other.zero_grad_parameters()
    for k, p in lstm.named_parameters().items():
        if k == "w_xi":
            np.testing.assert_allclose(p.data, before[k] - 0.5)
            assert not p.grad.any()
        else:
            np.testing.assert_array_equal(p.data, before[k])
            assert (p.grad == 1.0).all()
    assert lstm.w_xi._block.intact  # borrowing is not rebinding


def test_deepcopy_and_astype_rebuild_blocks():
    lstm = nn.LSTM(D, H)
    clone = copy.deepcopy(lstm)
    for (name, p), q in zip(lstm.named_parameters().items(), clone.parameters()):
        blk, _ = _rows_of(q)
        assert not np.shares_memory(q.data, p.data), name
        np.testing.assert_array_equal(q.data, p.data)
    clone.w_xi.data[...] = 0
    assert lstm.w_xi.data.any()
    lstm.float()
    for p in lstm.parameters():
        blk, _ = _rows_of(p)
        assert blk.data.dtype == np.float32 and p.grad.dtype == np.float32
    # a module borrowing a member converts it along, without breaking the owner's block
    model = nn.Sequential(lstm, _Uses(lstm.w_xi)).double()
    assert model.dtype == np.float64
    for p in lstm.parameters():
        blk, _ = _rows_of(p)
        assert blk.data.dtype == np.float64


def test_unpacked_parameters_compile_without_blocks_to_the_same_values():
    from tapernn.nn.packing import unpack_parameters

    a, b = _lstm_model(), _lstm_model()
    unpack_parameters(b)
    assert all(p._block is None and p.data.base is None for p in b.parameters())
    rng = np.random.default_rng(4)
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    for u, v in zip(_step(a, x, g), _step(b, x, g)):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-13)
    fwd = b._runtime.last.training_pair.forward.graph
    assert sum(n.attrs.get("kind") == "param" for n in fwd.inputs) == 12
    b.flatten_parameters()
    assert all(_rows_of(p) for p in b.parameters())


def test_a_model_stepped_before_and_after_rebinding_keeps_training():
    """A parameter rebound between calls of one compiled program: the next call reads it."""
    m = _lstm_model()
    x = np.random.default_rng(3).standard_normal((T, B, D))
    y0 = np.array(m.forward(x))
    m.module.w_hg.data = np.zeros((H, H))
    y1 = np.array(m.forward(x))
    assert m.trace_count == 1 and not np.allclose(y0, y1)
    ref = _lstm_model()
    ref.module.w_hg.data[...] = 0
    np.testing.assert_allclose(y1, np.array(ref.forward(x)), rtol=1e-12, atol=1e-13)


# ---- the concat canonicalisation simplify_views gained for block gradients ------------------------


def test_simplify_views_rejoins_concats_of_transposed_column_blocks(rng):
    def f(a, b, c):
        p = a @ b  # (D, 4H): the fused weight gradient's layout
        pieces = [tn.transpose(p[:, k * H : (k + 1) * H], (1, 0)) for k in range(4)]
        q = a @ c
        return tn.concat(pieces + [tn.transpose(q, (1, 0))], axis=0)

    arrays = [
        rng.standard_normal((D, 6)),
        rng.standard_normal((6, 4 * H)),
        rng.standard_normal((6, H)),
    ]
    g = tn.trace(f, *arrays)
    assert g.op_counts()["concat"] == 1 and g.op_counts()["getitem"] == 4
    out = assert_same_graph(g, arrays)
    assert "getitem" not in out.op_counts()
    # ... and, the products being read by nothing else, they are computed transposed:
    # concat(P^T, Q^T) = concat(b^T a^T, c^T a^T), contiguous row blocks of the result
    (cat,) = [n for n in out.nodes if n.op == "concat"]
    assert out.outputs[0] is cat and cat.attrs["axis"] == 0
    assert [i.op for i in cat.inputs] == ["matmul", "matmul"]
    assert [i.shape for i in cat.inputs] == [(4 * H, D), (H, D)]
    assert all(
        i.inputs[1].op == "transpose" and i.inputs[1].inputs[0].op == "input" for i in cat.inputs
    )


def test_transposed_products_only_when_nothing_else_reads_the_product(rng):
    arrays = [rng.standard_normal((3, 6)), rng.standard_normal((6, 4))]
    g = tn.trace(lambda a, b: tn.transpose(a @ b, (1, 0)), *arrays)
    out = assert_same_graph(g, arrays)
    (m,) = [n for n in out.nodes if n.op == "matmul"]
    assert out.outputs[0] is m and m.shape == (4, 3)

    def both(a, b):
        p = a @ b
        return [tn.transpose(p, (1, 0)), p]

    g = tn.trace(both, *arrays)
    out = assert_same_graph(g, arrays)
    assert out.outputs[0].op == "transpose" and out.outputs[0].inputs[0] is out.outputs[1]


def test_simplify_views_merges_runs_of_adjacent_slices_in_a_concat(rng):
    def f(x, y):
        return tn.concat([x[0:2], x[2:3], y, x[3:5], x[5:6]], axis=0)

    arrays = [rng.standard_normal((6, 3)), rng.standard_normal((2, 3))]
    out = assert_same_graph(tn.trace(f, *arrays), arrays)
    (cat,) = [n for n in out.nodes if n.op == "concat"]
    assert [i.shape for i in cat.inputs] == [(3, 3), (2, 3), (3, 3)]


def assert_same_graph(graph, arrays):
    expected = interpret(graph, *arrays)
    got = tn.compile(graph, passes=[P.simplify_views])(*arrays)
    for u, v in zip(
        got if isinstance(got, list) else [got],
        expected if isinstance(expected, list) else [expected],
    ):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    out, _ = P.run_passes(graph, [P.simplify_views])
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)
