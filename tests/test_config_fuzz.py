"""Seeded random differential fuzzer across compile configurations: for one model and data,
backend x unroll x layout x need_grad_input, lengths and batch sizes changing between calls
(cached rolled programs reused), gradients accumulated without zero_grad, and chunks remembered;
every answer checked against the NumPy equations of tests/cell_reference.py (complex-step
gradients), not config against config."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, gru_step, lstm_step, rnn_step, run

import tapernn as tn
from tapernn import nn

D, H = 3, 4
CELLS = {
    "LSTM": (lambda: nn.LSTM(D, H), lstm_step, 2),
    "FastLSTM": (lambda: nn.FastLSTM(D, H), fastlstm_step, 2),
    "GRU": (lambda: nn.GRU(D, H), gru_step, 1),
    "GRU_reset_after": (
        lambda: nn.GRU(D, H, reset_after=True),
        functools.partial(gru_step, reset_after=True),
        1,
    ),
    "RNN": (lambda: nn.RNN(D, H), rnn_step, 1),
}
CONFIGS = list(itertools.product([False, True], ["batch", "feature"], [True, False]))


def _cases(n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        name = list(CELLS)[k % len(CELLS)]
        unroll, layout, ngi = CONFIGS[rng.integers(len(CONFIGS))]
        shapes = [(int(rng.integers(1, 8)), int(rng.integers(1, 4))) for _ in range(3)]
        out.append((name, unroll, layout, ngi, shapes, int(rng.integers(1 << 30))))
    return out


def _check(cell, seq, step, ns, x, g, ngi, accumulated, tol):
    p = {k: v.data.astype(np.float64) for k, v in cell.named_parameters().items()}
    y = seq.forward(x)
    gi = seq.backward(x, g, need_grad_input=ngi)
    ref = complex_step_grads(step, p, x.astype(np.float64), ns, H, g.astype(np.float64))
    np.testing.assert_allclose(y, run(step, p, x, ns, H)[0], atol=tol, rtol=0)
    if ngi:
        np.testing.assert_allclose(gi, ref["input"], atol=tol, rtol=0)
    else:
        assert gi is None
    for k, v in cell.named_parameters().items():
        accumulated[k] = accumulated.get(k, 0) + ref[k]
        np.testing.assert_allclose(v.grad, accumulated[k], atol=tol, rtol=0, err_msg=k)


def _run_case(name, unroll, layout, ngi, shapes, seed, backend, dtype=np.float64, tol=1e-10):
    make, step, ns = CELLS[name]
    rng = np.random.default_rng(seed)
    tn.manual_seed(seed)
    cell = make().astype(dtype)
    seq = nn.Sequencer(cell, unroll=unroll)
    seq.set_plan_options(tn.PlanOptions(backend=backend, layout=layout))
    acc: dict = {}
    for T, B in shapes + shapes[:1]:  # the first shape again: its cached program reused
        x = rng.standard_normal((T, B, D)).astype(dtype)
        g = rng.standard_normal((T, B, H)).astype(dtype)
        if rng.random() < 0.5:  # sometimes gradients accumulate over calls
            seq.zero_grad_parameters()
            acc = {}
        _check(cell, seq, step, ns, x, g, ngi, acc, tol)
    # remembered chunks of random lengths == one pass over their concatenation
    seq.remember("both")
    seq.forget()
    lengths = [int(rng.integers(1, 5)) for _ in range(3)]
    xs = rng.standard_normal((sum(lengths), 2, D)).astype(dtype)
    outs, a = [], 0
    for n in lengths:
        outs.append(np.array(seq.forward(xs[a : a + n])))
        seq.backward(xs[a : a + n], np.ones((n, 2, H), dtype), need_grad_input=ngi)
        a += n
    p = {k: v.data.astype(np.float64) for k, v in cell.named_parameters().items()}
    np.testing.assert_allclose(np.concatenate(outs), run(step, p, xs, ns, H)[0], atol=tol, rtol=0)


@pytest.mark.parametrize(
    "case", _cases(10, seed=2026), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}"
)
def test_numpy_backend_against_equations(case):
    _run_case(*case, backend="numpy")


@pytest.mark.parametrize("case", _cases(3, seed=7), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_numba_backend_against_equations(case):
    pytest.importorskip("numba")
    _run_case(*case, backend="numba")


@pytest.mark.parametrize("case", _cases(2, seed=11), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_float32_against_equations(case):
    _run_case(*case, backend="numpy", dtype=np.float32, tol=2e-5)
