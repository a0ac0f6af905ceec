"""A rolled loop's carried state whose stack its backward reads shifted by one step (h_{t-1},
c_{t-1}: the weight-gradient GEMMs and the cell backward) is stored in the forward slab as one
(T+1)-row block, the initial state in its first row (its last for a reverse loop): the shifted
stack is a view, not a concat of the initial state and hs[:-1] (scan_grad, scan_ir.ys_places).
Values and gradients stay those of unroll=True (tests/test_rolled.py holds both to NumPy)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

CELLS = {
    "FastLSTM": lambda H: nn.FastLSTM(H, H),
    "LSTM": lambda H: nn.LSTM(H, H),
    "GRU": lambda H: nn.GRU(H, H),
}


def _run(seq, x, g, **kw):
    seq.zero_grad_parameters()
    y = np.array(seq.forward(x, **kw))
    gx = np.array(seq.backward(x, g))
    return [y, gx] + [p.grad.copy() for p in seq.parameters()]


def _shifted_concats(graph, T, B, H):
    return [
        (n.shape, n.attrs["axis"])
        for n in graph.nodes
        if n.op == "concat" and n.shape in ((T, B, H), (T * B, H))
    ]


@pytest.mark.parametrize("cell", list(CELLS))
def test_the_rolled_backward_concatenates_no_shifted_state_stacks(cell):
    T, B, H = 5, 3, 4
    seq = nn.Sequencer(CELLS[cell](H), unroll=False)
    x = np.random.default_rng(0).standard_normal((T, B, H))
    _run(seq, x, x)
    pair = seq._runtime.last.training_pair
    for part in (pair.forward, pair.backward):
        found = _shifted_concats(part.graph, T, B, H)
        assert not found, f"{cell}: (T, B, H) / (T*B, H) concats in the rolled program: {found}"
    slabs = [n for n in pair.forward.graph.nodes if n.op == "scan"]
    assert slabs and all(n.attrs.get("shifted") for n in slabs)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_shifted_slabs_keep_values_and_gradients(cell, dtype):
    """rolled == unroll=True over lengths 1 (no shifted rows but the initial one), 4 and 6,
    with an update between, and with a lengths= mask and a remembered state across chunks."""
    H, B = 4, 3
    rng = np.random.default_rng(1)
    rolled = nn.Sequencer(CELLS[cell](H), unroll=False).astype(dtype).remember("both")
    unrolled = nn.Sequencer(CELLS[cell](H), unroll=True).astype(dtype).remember("both")
    for p, q in zip(unrolled.parameters(), rolled.parameters()):
        p.data[...] = q.data
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for T in (1, 4, 6, 4):
        x = rng.standard_normal((T, B, H)).astype(dtype)
        g = rng.standard_normal((T, B, H)).astype(dtype)
        kw = {"lengths": np.array([T, max(1, T - 2), 1])} if T == 6 else {}
        a, b = _run(rolled, x, g, **kw), _run(unrolled, x, g, **kw)
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=tol, atol=tol)
        rolled.update_parameters(0.1)
        unrolled.update_parameters(0.1)


def test_a_reverse_loop_keeps_its_initial_state_in_the_last_row():
    """tn.scan directly: a reverse loop's shifted stack (the carry entering each step) and
    its gradient equal the unrolled program's (BiSequencer's backward half)."""
    T, B, H = 4, 2, 3
    rng = np.random.default_rng(2)

    def body(h, x, w):
        h2 = tn.tanh(x + h @ w)
        return h2, h2

    step = tn.trace(body, np.zeros((B, H)), np.zeros((B, H)), np.zeros((H, H)))

    def f(h0, xs, w):
        r = tn.scan(step, [h0], [xs], [w], reverse=True)
        return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(r.carries[0])

    args = [rng.standard_normal(s) for s in ((B, H), (T, B, H), (H, H))]
    g = tn.trace(f, *args)
    joint = tn.grad(g)
    rolled = tn.compile(joint)(*args)
    unrolled = tn.compile(joint, unroll=True)(*args)
    for u, v in zip(rolled, unrolled):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    tn.gradcheck(f, *args)


def test_the_numba_loop_kernel_writes_shifted_blocks_forward_and_reverse(monkeypatch):
    """The whole-loop kernel (backends/loop_source.py) lays the slab out like the Python loop
    (the Python loop forbidden): BiSequencer (a forward and a reverse loop) on numba equals
    the NumPy backend."""
    pytest.importorskip("numba")
    from test_numba_loop import forbid_python_loop

    T, B, H = 5, 2, 3
    x = np.random.default_rng(3).standard_normal((T, B, H))
    got = []
    for backend in ("numpy", "numba"):
        tn.manual_seed(4)
        m = nn.BiSequencer(nn.FastLSTM(H, H), nn.GRU(H, H))
        if backend == "numba":
            forbid_python_loop(monkeypatch)
        tn.set_backend(backend)
        try:
            y = np.array(m.forward(x))
            gx = np.array(m.backward(x, np.ones_like(y)))
        finally:
            tn.set_backend("numpy")
        got.append([y, gx] + [p.grad.copy() for p in m.parameters()])
    for u, v in zip(*got):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
