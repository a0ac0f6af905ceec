"""A rolled gated cell's forward stores the values its backward reads per step (the gates) as
ONE ys block of the slab, (B, k*H) per step (scan_grad.gate_block), written in place by the
elementwise kernels or by one copy per step; the backward reads the gates as column views of
it. Values and gradients stay the NumPy equations' and unroll=True's."""

import os
import re

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, gru_step, lstm_step, run

from tapernn import nn

D, H = 3, 4
CELLS = {
    "FastLSTM": (lambda: nn.FastLSTM(D, H), fastlstm_step, 2),
    "LSTM(peephole=False)": (
        lambda: nn.LSTM(D, H, peephole=False),
        lambda p, x, h, c: lstm_step(p, x, h, c, peephole=False),
        2,
    ),
    "LSTM": (lambda: nn.LSTM(D, H), lstm_step, 2),
    "GRU": (lambda: nn.GRU(D, H), gru_step, 1),
}


def _params(m):
    return {k: p.data.copy() for k, p in m.named_parameters().items()}


def _forward_scans(seq):
    graph = seq._runtime.last.training_pair.forward.graph
    return [n for n in graph.nodes if n.op == "scan"]


def _runner_sources(seq):
    fn = seq._runtime.last.training_pair.forward.program.fn
    return [
        v.source
        for v in (fn.__kwdefaults__ or {}).values()
        if "_ys_views" in getattr(v, "source", "")
    ]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("B", [1, 3])
def test_the_rolled_forward_writes_its_gates_as_one_block(cell, B):
    """Per step, the forward loop writes its h and c (the shifted blocks) and ONE more ys (the
    gate block); the generated runner copies at most once per step into the slab rows (on
    main: 4 ys for an LSTM, 5 for a GRU, and FastLSTM copied two of them, `w[...] = v`)."""
    T = 5
    seq = nn.Sequencer(CELLS[cell][0](), unroll=False)
    x = np.random.default_rng(0).standard_normal((T, B, D))
    seq.forward(x)
    seq.backward(x, np.ones((T, B, H)))
    (scan,) = _forward_scans(seq)
    nc, outs = scan.attrs["n_carry"], scan.attrs["body"].outputs
    shifted = {j for j, _ in scan.attrs.get("shifted", ())}
    rest = [o.shape for j, o in enumerate(outs[nc:]) if j not in shifted]
    assert len(rest) == 1, f"{cell}: the forward loop's ys besides h/c: {rest}"
    assert rest[0][0] == B and rest[0][1] >= 3 * H
    if os.environ.get("TAPERNN_BACKEND", "numpy") != "numpy":
        return  # (numba: one kernel, no runner source; the layout above is what it writes)
    (source,) = _runner_sources(seq)
    copies = re.findall(
        r"concatenate\(.*out=w\d+\)|^\s*w\d+\[\.\.\.\] =|copyto\(w", source, flags=re.MULTILINE
    )
    assert len(copies) <= 1, f"{cell}: copies into the slab rows per step:\n{source}"


@pytest.mark.parametrize("cell", list(CELLS))
def test_gate_blocks_keep_the_numpy_equations(cell):
    """rolled == the hand-written NumPy equations (values; every gradient by exact complex
    steps) to 1e-12 in float64, and == unroll=True, over two backward calls of one forward
    (the second must not read gates the first changed)."""
    make, step, n_states = CELLS[cell]
    T, B = 4, 2
    rng = np.random.default_rng(7)
    cell = make()
    rolled, unrolled = nn.Sequencer(cell, unroll=False), nn.Sequencer(make(), unroll=True)
    unrolled.load_state_dict(rolled.state_dict())
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    cell_params = _params(cell)
    expected, _ = run(step, cell_params, x, n_states, H)
    exact = complex_step_grads(step, cell_params, x, n_states, H, g)
    y = np.array(rolled.forward(x))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, unrolled.forward(x), rtol=1e-12, atol=1e-12)
    for _ in range(2):
        rolled.zero_grad_parameters()
        unrolled.zero_grad_parameters()
        gx = np.array(rolled.backward(x, g))
        np.testing.assert_allclose(gx, exact["input"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gx, unrolled.backward(x, g), rtol=1e-12, atol=1e-12)
        for (name, p), q in zip(cell.named_parameters().items(), unrolled.parameters()):
            np.testing.assert_allclose(p.grad, exact[name], rtol=1e-12, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cell", list(CELLS))
def test_gate_blocks_in_float32(cell):
    T, B = 6, 3
    rng = np.random.default_rng(8)
    rolled = nn.Sequencer(CELLS[cell][0](), unroll=False).astype(np.float32)
    unrolled = nn.Sequencer(CELLS[cell][0](), unroll=True).astype(np.float32)
    unrolled.load_state_dict(rolled.state_dict())
    for _ in range(2):
        x = rng.standard_normal((T, B, D)).astype(np.float32)
        g = rng.standard_normal((T, B, H)).astype(np.float32)
        outs = []
        for seq in (rolled, unrolled):
            seq.zero_grad_parameters()
            y = np.array(seq.forward(x))
            gx = np.array(seq.backward(x, g))
            outs.append([y, gx] + [p.grad.copy() for p in seq.parameters()])
            assert y.dtype == gx.dtype == np.float32
            seq.update_parameters(0.1)
        for u, v in zip(*outs):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
