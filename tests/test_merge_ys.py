"""A rolled gated cell's gate gradients leave the reverse loop as one ys (merge_ys.py): the
(T*B, kH) stacks the dx and weight-gradient GEMMs read are views of the slab, not concats;
values and gradients stay those of the unrolled program (tests/test_rolled.py holds both to
the NumPy equations)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step

CELLS = {
    "LSTM(peephole=False)": lambda H: nn.LSTM(H, H, peephole=False),
    "LSTM": lambda H: nn.LSTM(H, H),
    "GRU": lambda H: nn.GRU(H, H),
}


def _run(seq, x, g):
    seq.zero_grad_parameters()
    y = np.array(seq.forward(x))
    gx = np.array(seq.backward(x, g))
    return y, gx, [p.grad.copy() for p in seq.parameters()]


@pytest.mark.parametrize("cell", list(CELLS))
def test_the_rolled_backward_concatenates_no_gate_gradient_stacks(cell):
    T, B, H = 5, 3, 4
    seq = nn.Sequencer(CELLS[cell](H), unroll=False)
    x = np.random.default_rng(0).standard_normal((T, B, H))
    _run(seq, x, x)
    graph = seq._runtime.last.training_pair.backward.graph
    stacks = [
        n.shape
        for n in graph.nodes
        if n.op == "concat" and n.ndim == 2 and n.shape[0] == T * B and n.shape[1] >= 2 * H
    ]
    assert not stacks, f"(T*B, k*H) concats in the rolled backward: {stacks}"


@pytest.mark.parametrize("cell", list(CELLS))
def test_merged_gate_ys_keep_values_and_gradients(cell):
    """rolled (the pass applies) == unroll=True (no loop) to 1e-12 in float64, over two
    steps with an update between (the merged body is cached and reused)."""
    T, B, H = 6, 3, 5
    rng = np.random.default_rng(1)
    rolled = nn.Sequencer(CELLS[cell](H), unroll=False)
    unrolled = nn.Sequencer(CELLS[cell](H), unroll=True)
    for p, q in zip(unrolled.parameters(), rolled.parameters()):
        p.data[...] = q.data
    for _ in range(2):
        x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
        a, b = _run(rolled, x, g), _run(unrolled, x, g)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=1e-12)
        for p, q in zip(a[2], b[2]):
            np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)
        rolled.update_parameters(0.1)
        unrolled.update_parameters(0.1)


def test_a_rolled_peephole_lstm_keeps_only_the_gate_gradients_per_step():
    """The reverse loop's slab row is [dz_i dz_f dz_g dz_o] (4 B*H): the peephole weights'
    sum_b dz_t * c_t are (H,) carries, not three more (B, H) ys per step (7 B*H before)."""
    T, B, H = 5, 3, 4
    seq = nn.Sequencer(nn.LSTM(H, H), unroll=False)
    x = np.random.default_rng(0).standard_normal((T, B, H))
    _run(seq, x, x)
    graph = seq._runtime.last.training_pair.backward.graph
    rows = [
        sum(int(np.prod(o.shape)) for o in n.attrs["body"].outputs[n.attrs["n_carry"] :])
        for n in graph.nodes
        if n.op == "scan"
    ]
    assert rows == [4 * B * H], f"reverse loop ys per step: {rows} elements, want {4 * B * H}"


@pytest.mark.parametrize("cell", ["LSTM(peephole=False)", "LSTM", "GRU"])
def test_rolled_gated_loop_peak_is_close_to_fastlstms(cell):
    """The steady loop's tracemalloc peak of a rolled LSTM(peephole=False) / LSTM / GRU is
    within 9 % of a rolled FastLSTM's (same T, B, H; the rest is parameter-sized: per-gate
    weight-gradient blocks): before, they held a (T*B, 4H) gate-gradient concat FastLSTM does
    not, and LSTM three (B, H) peephole terms per step (1.20x, 1.35x); GRU, with 3 gates, is
    a guard. Since the shifted state stacks are views (test_shifted_states.py), FastLSTM's
    rolled peak is ~1.9 U lower (19.3 U here, 21.1 U before): at this small H the LSTM's and
    GRU's peak is in their forward (the per-gate x @ W_g + b_g stacks, which FastLSTM adds in
    place), which that change does not touch, so the margin is 25 % (1.19x measured; at
    (32, 50, 256) float32 LSTM(peephole=False) and FastLSTM peak equal, BENCHMARKS.md)."""
    T, B, H = 10, 16, 64
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    # (without dz_in_gates: the backward's slab written over the saved gates applies to
    # FastLSTM and LSTM(peephole=False), not to GRU nor, here, the peephole LSTM, whose
    # backward carries the peephole sums before its rows: test_dz_in_gates.py)
    plain = PlanOptions(dz_in_gates=False)
    fast = nn.Sequencer(nn.FastLSTM(H, H), unroll=False).set_plan_options(plain)
    seq = nn.Sequencer(CELLS[cell](H), unroll=False).set_plan_options(plain)
    base = loop_peak_bytes(tapernn_loop_step(fast, x, g))
    real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
    assert real <= 1.25 * base, f"{cell} rolled {real:,} B vs FastLSTM rolled {base:,} B"


def _two_ys_body(B, H):
    """h' = tanh(h @ U + x); ys a = h' * x, b = h' - x (both (B, H))."""

    def step(h, x, U):
        h2 = tn.tanh(h @ U + x)
        return [h2, h2 * x, h2 - x]

    z = np.zeros((B, H))
    return tn.trace(step, z, z, np.zeros((H, H)), names=["h", "x", "U"])


@pytest.mark.parametrize("reverse", [False, True])
def test_a_scans_concatenated_ys_become_one_in_any_loop(reverse):
    """tn.scan directly: [a b] @ M and [b a] @ N after the loop (the first concat's order is
    the merged ys' order, the second stays a concat of views) and b read alone, against a
    NumPy loop; the compiled loop has one ys, and no (T*B, 2H) concat of [a b] is left."""
    T, B, H = 5, 3, 4
    rng = np.random.default_rng(3)
    h0, xs = rng.standard_normal((B, H)), rng.standard_normal((T, B, H))
    U, M, N = (rng.standard_normal(s) for s in ((H, H), (2 * H, 2), (2 * H, 3)))
    body = _two_ys_body(B, H)

    def f(h0, xs, U, M, N):
        r = tn.scan(body, [h0], [xs], [U], reverse=reverse)
        a, b = (tn.reshape(y, (T * B, H)) for y in r.ys)
        return [
            tn.concat([a, b], axis=1) @ M,
            tn.concat([b, a], axis=1) @ N,
            r.ys[1] * 2.0,
            r.carries[0],
        ]

    compiled = tn.compile(tn.trace(f, h0, xs, U, M, N))
    (s,) = [n for n in compiled.graph.nodes if n.op == "scan"]
    assert len(s.attrs["body"].outputs) == 2, "carry + one merged ys"
    stacks = [n for n in compiled.graph.nodes if n.op == "concat" and n.shape == (T * B, 2 * H)]
    assert len(stacks) == 1, f"[a b] is a view, [b a] a concat: {len(stacks)} concats"
    h, ys_a, ys_b = h0, np.empty((T, B, H)), np.empty((T, B, H))
    for t in range(T - 1, -1, -1) if reverse else range(T):
        h = np.tanh(h @ U + xs[t])
        ys_a[t], ys_b[t] = h * xs[t], h - xs[t]
    a, b = ys_a.reshape(T * B, H), ys_b.reshape(T * B, H)
    want = [np.hstack([a, b]) @ M, np.hstack([b, a]) @ N, ys_b * 2.0, h]
    for got, w in zip(compiled(h0, xs, U, M, N), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
