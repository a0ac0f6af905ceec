"""Masking together with lengths= (hqa17): `cell.mask_zero()` / `nn.MaskZero(cell, 1)` inside a
Sequencer called with lengths= give each row what running its own first L steps alone gives
(masked as Element-RNN masks: a zero input row resets / zeroes), with the state held past L --
the padded input rows, cleared to zeros by the Sequencer, do not reset it; outputs and input
gradients past L are exactly 0. And a BiSequencer (no lengths=) over mask_zero() cells, right-
padded with zero rows, gives each row what running it alone gives (its error message says so)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

T, B, D, H = 6, 5, 3, 4
LENGTHS = np.array([6, 3, 5, 4, 3])


def _stack(kinds):
    mods, d = [], D
    for kind, how in kinds:
        c = getattr(nn, kind)(d, H)
        d = H
        mods.append(c.mask_zero() if how == "cell" else nn.MaskZero(c, 1) if how else c)
    return nn.Sequential(*mods)


def _data(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, D))
    x[1, 0] = x[0, 2] = x[3, 3] = x[4, 1] = 0  # zero rows inside rows' lengths (resets)
    x[:2, 4] = 0  # left padding inside the length
    x[5, 1] = np.nan  # garbage in the padding
    x[4, 3] = 1e300
    return x, rng.standard_normal((T, B, H))


def _alone_sum(make, x, g, lengths, probe=lambda: None):
    """Per row b: outputs / input gradient of running x[:L_b, b] alone (and `probe()` after
    it); the parameter gradients summed over the rows. Each row as a C copy: the rows' numba
    program kernels compile their all-C specialisation alone, not one for layout "A" besides
    (2 cold compiles a case, 3.5-6.7 s each; that specialisation's own test:
    test_numba_program_layouts, BENCHMARKS.md "hcoldB")."""
    rows, total = [], None
    for b, n in enumerate(lengths):
        m = make()
        m.zero_grad_parameters()
        xb, gb = np.ascontiguousarray(x[:n, b : b + 1]), np.ascontiguousarray(g[:n, b : b + 1])
        y = m.forward(xb)
        gx = m.backward(xb, gb)
        grads = [p.grad.copy() for p in m.parameters()]
        total = grads if total is None else [a + c for a, c in zip(total, grads)]
        rows.append((np.asarray(y), gx, probe()))
    return rows, total


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("unroll", [None, True])
@pytest.mark.parametrize(
    "kinds",
    [
        [("FastLSTM", "cell"), ("GRU", "module")],
        [("GRU", "module"), ("LSTM", "cell")],
        [("RNN", "cell"), ("FastLSTM", None)],
    ],
    ids=["fastlstm-cell/gru-module", "gru-module/lstm-cell", "rnn-cell/fastlstm"],
)
def test_each_row_is_its_own_length_masked_alone(backend, unroll, kinds, monkeypatch):
    if backend == "numba":
        from tapernn.backends import numba_available

        if not numba_available():
            pytest.skip("numba is not installed")
        if unroll:
            pytest.skip("(numba: the rolled loops; unrolled programs compile for minutes)")
        from tapernn.backends import numba_program

        monkeypatch.setattr(numba_program, "_programs", {})  # (this test's program kernels)
    tn.manual_seed(1)
    inner = _stack(kinds)
    opts = tn.PlanOptions(backend=backend)
    seq = nn.Sequencer(inner, unroll=unroll).set_plan_options(opts)
    x, g = _data(0)
    for _ in range(3):  # (numba: kernels from the second call)
        y = seq.forward(x, lengths=LENGTHS)
        seq.zero_grad_parameters()
        gx = seq.backward(x, g)
    grads = [p.grad.copy() for p in seq.parameters()]
    cells = [c for c in inner.modules() if isinstance(c, nn.AbstractRecurrent)]
    states = lambda: [np.array(s) for c in cells for s in _leaves(c.get_hidden_state(-1))]
    last = states()
    rows, total = _alone_sum(
        lambda: nn.Sequencer(inner, unroll=unroll).set_plan_options(opts), x, g, LENGTHS, states
    )
    for b, (n, (yb, gxb, mine)) in enumerate(zip(LENGTHS, rows)):
        np.testing.assert_allclose(y[:n, b : b + 1], yb, rtol=0, atol=1e-12, err_msg=f"row {b}")
        np.testing.assert_allclose(gx[:n, b : b + 1], gxb, rtol=0, atol=1e-12, err_msg=f"row {b}")
        assert np.all(y[n:, b] == 0) and np.all(gx[n:, b] == 0), b
        for s, a in zip(last, mine):  # each row's final states: at its own last step
            np.testing.assert_allclose(s[b : b + 1], a, rtol=0, atol=1e-12, err_msg=f"state {b}")
    for a, c in zip(grads, total):
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)
    if backend == "numba":  # (the all-C specialisation alone: the rows alone are C copies)
        from tapernn.backends import background

        assert background.wait(timeout=600)  # (the compiles the calls asked for, done)
        handles = list(numba_program._programs.values())
        sigs = [a for h in handles for sig in h.kernel.signatures for a in sig[h.inputs]]
        layouts = {a.layout for a in sigs if getattr(a, "ndim", 0)}
        assert handles and layouts == {"C"}, layouts


def _leaves(state):
    return list(state) if isinstance(state, (list, tuple)) else [state]


@pytest.mark.parametrize("kind", ["FastLSTM", "GRU", "LSTM"])
@pytest.mark.parametrize("unroll", [None, True])
def test_a_bisequencer_of_mask_zero_cells_runs_right_padded_rows_as_alone(kind, unroll):
    tn.manual_seed(2)
    fwd, bwd = getattr(nn, kind)(D, H).mask_zero(), getattr(nn, kind)(D, H).mask_zero()
    x, _ = _data(3)
    x = np.nan_to_num(x, nan=0.5, posinf=0.5)
    lengths = np.array([6, 3, 5, 2, 4])
    for b, n in enumerate(lengths):
        x[n:, b] = 0
        x[:n, b][np.abs(x[:n, b]).max(-1) == 0] = 0.25  # no zero rows inside: pure padding
    bi = nn.BiSequencer(fwd, bwd, unroll=unroll)
    y = bi.forward(x)
    g = np.random.default_rng(4).standard_normal(np.shape(y))
    bi.zero_grad_parameters()
    gx = bi.backward(x, g)
    grads = [p.grad.copy() for p in bi.parameters()]
    rows, total = _alone_sum(lambda: nn.BiSequencer(fwd, bwd, unroll=unroll), x, g, lengths)
    for b, (n, (yb, gxb, _)) in enumerate(zip(lengths, rows)):
        np.testing.assert_allclose(y[:n, b : b + 1], yb, rtol=0, atol=1e-12, err_msg=f"row {b}")
        np.testing.assert_allclose(gx[:n, b : b + 1], gxb, rtol=0, atol=1e-12, err_msg=f"row {b}")
        assert np.all(y[n:, b] == 0), b
    for a, c in zip(grads, total):
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)


def test_the_length_mask_is_named_so_in_graphs_and_diagrams():
    """On main a Sequencer's lengths= mask was the graph input "target" (a criterion's name),
    drawn as an ellipse "target" feeding every step."""
    m = nn.Sequencer(nn.Sequential(nn.LSTM(3, 4).mask_zero(), nn.MaskZero(nn.GRU(4, 4), 1)))
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    y = m.forward(x, lengths=np.array([3, 2]))
    m.backward(x, np.ones_like(y))
    names = [n.name for n in m.graph.inputs]
    assert names[:2] == ["input", "length_mask"] and "target" not in names, names
    assert "label=length_mask" in tn.to_dot(m, level="module").source
    crit = nn.ClassNLLCriterion()
    crit.forward(np.log(np.full((2, 3), 1 / 3)), np.array([0, 2]))
    assert [n.name for n in crit.graph.inputs][:2] == ["input", "target"]
