"""Compiler crashes and wrong answers found by issue 15 and by the random-cell fuzzer
(tests/cell_fuzz.py), one named test each: the program, the values from plain NumPy, and the
same values with the default passes and with none."""
from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn, passes

PIPELINES = {"default": None, "none": []}


def _seq_run(cell, x, passes_=None):
    """Sequencer(cell) forward and backward (seed ones): output, grad input, param grads."""
    m = nn.Sequencer(cell)
    if passes_ is not None:
        m.set_passes(passes_)
    y = m.forward(x)
    m.zero_grad_parameters()
    dx = m.backward(x, np.ones_like(y))
    return y, dx, [p.grad.copy() for p in m.parameters()]


def _assert_pipelines_agree(make_cell, x, oracle=None):
    runs = {name: _seq_run(make_cell(), x, p) for name, p in PIPELINES.items()}
    (y0, dx0, g0), (y1, dx1, g1) = runs["default"], runs["none"]
    np.testing.assert_allclose(y0, y1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx0, dx1, rtol=1e-12, atol=1e-12)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    if oracle is not None:
        np.testing.assert_allclose(y0, oracle, rtol=1e-12, atol=1e-12)


class CrossedStates(nn.Cell):
    """Issue 15 item 5: a = b @ w1 + b1 + x, b = a @ w2 + b2 -- each state's matmul reads the
    other's: hoisting both weight groups across time made a cycle through the two groups."""
    state_names = ("a", "b")

    def __init__(self, size):
        super().__init__(size, size)
        rng = np.random.default_rng(0)
        for name, shape in (("w1", (size, size)), ("b1", (size,)), ("w2", (size, size)),
                            ("b2", (size,))):
            self.parameter(name, shape, init=rng.standard_normal(shape) * 0.5)

    def step(self, x, a, b):
        return b @ self.w1 + self.b1 + x, a @ self.w2 + self.b2


def _crossed_numpy(cell, x):
    p = {k: v.data for k, v in cell.named_parameters().items()}
    a = b = np.zeros(x.shape[1:])
    out = []
    for xt in x:
        a, b = b @ p["w1"] + p["b1"] + xt, a @ p["w2"] + p["b2"]
        out.append(a)
    return np.stack(out)


@pytest.mark.parametrize("T", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_hoist_across_time_crossed_states(T, batch):
    x = np.random.default_rng(1).standard_normal((T,) + batch + (3,))
    _assert_pipelines_agree(lambda: CrossedStates(3), x, _crossed_numpy(CrossedStates(3), x))


def test_accept_independent_refuses_a_cycle_through_two_groups():
    """Structure: after hoist_across_time the graph verifies, and each weight's per-step
    matmuls that were merged read a stack of states that do not depend on the merge."""
    x = np.random.default_rng(2).standard_normal((4, 2, 3))
    m = nn.Sequencer(CrossedStates(3))
    m.forward(x)
    g = passes.hoist_across_time(m.graph)
    g.verify()
    assert sum(n.op == "matmul" for n in g.nodes) < sum(n.op == "matmul" for n in m.graph.nodes)


class StackOfStacks(nn.Cell):
    """Issue 15 item 6: a = sum(stack([x, h])); sum(stack([a, a])) -- fuse_row_sums merged the
    two stack sums, the second of which reads the first."""
    state_names = ("h",)

    def step(self, x, h):
        a = tn.sum(tn.stack([x, h]), axis=0)
        return tn.sum(tn.stack([a, a]), axis=0)


@pytest.mark.parametrize("shape", [(3,), (2, 3)])
def test_fuse_gates_stack_sum_of_a_stack_sum(shape):
    def f(x, h):
        a = tn.sum(tn.stack([x, h]), axis=0)
        b = tn.sum(tn.stack([a, a]), axis=0)
        return tn.sum(b * b)

    rng = np.random.default_rng(3)
    x, h = rng.standard_normal(shape), rng.standard_normal(shape)
    g = tn.grad(tn.trace(f, x, h))
    got = tn.compile(g)(x, h)
    want = [np.sum((2 * (x + h)) ** 2), 8 * (x + h), 8 * (x + h)]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for a, b in zip(tn.compile(g, passes=[])(x, h), want):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("T,batch", [(1, ()), (3, ()), (3, (2,))])
def test_stack_of_stacks_cell(T, batch):
    x = np.random.default_rng(4).standard_normal((T,) + batch + (3,))
    h, want = np.zeros(batch + (3,)), []
    for xt in x:
        h = 2 * (xt + h)
        want.append(h)
    _assert_pipelines_agree(lambda: StackOfStacks(3, 3), x, np.stack(want))


# ---- issue 15 item 7: 0-d values ------------------------------------------------------------

@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("case", ["sigmoid_sum", "tanh_max", "sigmoid_of_getitem",
                                  "exp_mean", "chain"])
def test_zero_d_values(pipeline, case):
    a = np.array([0.3, -1.2, 2.0])
    fn, want = {
        "sigmoid_sum": (lambda v: tn.sigmoid(tn.sum(v)), 1 / (1 + np.exp(-a.sum()))),
        "tanh_max": (lambda v: tn.tanh(tn.max(v)), np.tanh(a.max())),
        "sigmoid_of_getitem": (lambda v: tn.sigmoid(v[1]), 1 / (1 + np.exp(-a[1]))),
        "exp_mean": (lambda v: tn.exp(tn.mean(v)) * 2.0, np.exp(a.mean()) * 2),
        "chain": (lambda v: tn.tanh(tn.sigmoid(tn.sum(v)) * 3.0) + tn.sigmoid(v[0]),
                  np.tanh(3 / (1 + np.exp(-a.sum()))) + 1 / (1 + np.exp(-a[0]))),
    }[case]
    g = tn.trace(fn, a)
    compiled = tn.compile(g, passes=PIPELINES[pipeline])
    got = compiled(a)
    assert np.shape(got) == ()
    np.testing.assert_allclose(got, want, rtol=1e-13)
    np.testing.assert_allclose(compiled(a), want, rtol=1e-13)  # second call, same buffers
    grads = tn.compile(tn.grad(tn.trace(lambda v: fn(v) * 1.0, a)), passes=PIPELINES[pipeline])
    h = 1e-6
    fd = [(fn_np(fn, a + h * e) - fn_np(fn, a - h * e)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(grads(a)[1], fd, rtol=1e-6, atol=1e-9)


def fn_np(fn, a):
    return float(tn.compile(tn.trace(fn, a), passes=[])(a))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_d_input_to_a_module(dtype):
    x = np.array(0.3, dtype)
    for m, want in ((nn.Sigmoid(), 1 / (1 + np.exp(-0.3))), (nn.Tanh(), np.tanh(0.3))):
        if dtype == np.float32:
            m.float()  # (a module computes in its own dtype, float64 unless told)
        y = m.forward(x)
        assert np.shape(y) == () and y.dtype == dtype
        np.testing.assert_allclose(y, want, rtol=1e-6)
        dy = m.backward(x, np.array(1.0, dtype))
        np.testing.assert_allclose(dy, want * (1 - want) if isinstance(m, nn.Sigmoid)
                                   else 1 - want ** 2, rtol=1e-5)
