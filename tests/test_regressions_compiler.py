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
    m = nn.Sequencer(cell).astype(x.dtype)
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
        for name, shape in (
            ("w1", (size, size)),
            ("b1", (size,)),
            ("w2", (size, size)),
            ("b2", (size,)),
        ):
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
@pytest.mark.parametrize(
    "case", ["sigmoid_sum", "tanh_max", "sigmoid_of_getitem", "exp_mean", "chain"]
)
def test_zero_d_values(pipeline, case):
    a = np.array([0.3, -1.2, 2.0])
    fn, want = {
        "sigmoid_sum": (lambda v: tn.sigmoid(tn.sum(v)), 1 / (1 + np.exp(-a.sum()))),
        "tanh_max": (lambda v: tn.tanh(tn.max(v)), np.tanh(a.max())),
        "sigmoid_of_getitem": (lambda v: tn.sigmoid(v[1]), 1 / (1 + np.exp(-a[1]))),
        "exp_mean": (lambda v: tn.exp(tn.mean(v)) * 2.0, np.exp(a.mean()) * 2),
        "chain": (
            lambda v: tn.tanh(tn.sigmoid(tn.sum(v)) * 3.0) + tn.sigmoid(v[0]),
            np.tanh(3 / (1 + np.exp(-a.sum()))) + 1 / (1 + np.exp(-a[0])),
        ),
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
        np.testing.assert_allclose(
            dy, want * (1 - want) if isinstance(m, nn.Sigmoid) else 1 - want**2, rtol=1e-5
        )


# ---- cases found by the random-cell fuzzer (tests/cell_fuzz.py; seed, pruned) -----------------
# Each cell's step is written once against `F` (tapernn, or the NumPy stand-in below) and `p`
# (its parameters: Vars inside tapernn, arrays for the NumPy evaluation).


class _NumPyF:
    tanh, exp, log, split = np.tanh, np.exp, np.log, np.split

    @staticmethod
    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    @staticmethod
    def sum(v, axis=None, keepdims=False):
        return np.sum(v, axis=axis, keepdims=keepdims)

    @staticmethod
    def concat(vs, axis):
        return np.concatenate(vs, axis=axis)


def _fuzz_cell(name, D, H, n_states, shapes, step, seed=0):
    rng = np.random.default_rng(seed)
    values = {k: rng.standard_normal(s) * 0.6 for k, s in shapes.items()}

    def __init__(self):
        nn.Cell.__init__(self, D, H)
        for key, value in values.items():
            self.parameter(key, value.shape, init=value)

    cls = type(
        name,
        (nn.Cell,),
        {
            "state_names": tuple(f"s{k}" for k in range(n_states)),
            "__init__": __init__,
            "step": lambda self, x, *s: step(tn, self, x, *s),
        },
    )

    def numpy_step(x, *s):
        new = step(_NumPyF, _Params(values), x, *s)
        return new if isinstance(new, tuple) else (new,)

    cls.numpy_step = staticmethod(numpy_step)
    cls.n_states, cls.H = n_states, H
    return cls


class _Params:
    def __init__(self, values):
        self.__dict__.update(values)


def _numpy_stack(classes, x):
    states = [[np.zeros(x.shape[1:-1] + (c.H,))] * c.n_states for c in classes]
    outs = []
    for xt in x:
        h = xt
        for k, c in enumerate(classes):
            states[k] = list(c.numpy_step(h, *states[k]))
            h = states[k][0]
        outs.append(h)
    return np.stack(outs)


def _check_fuzz_case(classes, x, dtype=np.float64):
    def make():
        cells = [c() for c in classes]
        return cells[0] if len(cells) == 1 else nn.Sequential(*cells)

    want = _numpy_stack(classes, x)
    x = x.astype(dtype)
    runs = {name: _seq_run(make(), x, p) for name, p in PIPELINES.items()}
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for y, dx, grads in runs.values():
        assert y.dtype == dtype
        np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    for a, b in zip(runs["default"], runs["none"]):
        for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            np.testing.assert_allclose(u, v, rtol=tol, atol=tol)


Seed156 = _fuzz_cell(  # a state returned twice; the first reads the third, the others the first
    "Seed156",
    1,
    1,
    3,
    {"w3": (1, 1), "b4": (1,), "w5": (1, 1), "b6": (1,)},
    lambda F, p, x, s0, s1, s2: (F.tanh(s2 @ p.w3 + p.b4),) + (F.tanh(s0 @ p.w5 + p.b6 + x),) * 2,
)


def test_fuzz_seed156_aliased_state_crossed_through_hoisting():
    _check_fuzz_case([Seed156], np.random.default_rng(156).standard_normal((4, 1)))


def _seed259(F, p, x, s0, s1, s2):  # gates cut by slice and split feed a crossed state
    v3 = x @ p.w0 + s2 @ p.w1 + p.b2
    v8 = x @ p.w3 + v3[..., 3:6] @ p.w4 + p.b5
    v14 = s0 @ p.w8 + p.b9
    return F.tanh(F.split(v8, 4, axis=-1)[3][..., 1:3] @ p.w7), s1, F.tanh(v14 + v14 * x)


Seed259 = _fuzz_cell(
    "Seed259",
    1,
    3,
    3,
    {
        "w0": (1, 9),
        "w1": (3, 9),
        "b2": (9,),
        "w3": (1, 12),
        "w4": (3, 12),
        "b5": (12,),
        "w7": (2, 3),
        "w8": (3, 3),
        "b9": (3,),
    },
    _seed259,
)


def test_fuzz_seed259_gate_slices_and_a_passed_through_state():
    _check_fuzz_case([Seed259], np.random.default_rng(259).standard_normal((3, 1)))


Seed133a = _fuzz_cell("Seed133a", 1, 3, 1, {"w4": (3, 3)}, lambda F, p, x, s0: F.tanh(s0 @ p.w4))


def _seed133b(F, p, x, s0, s1, s2):
    v5 = s0 @ p.w7
    return (F.tanh(s1 @ p.w4 + p.b5 + F.tanh(x @ p.w6)), F.tanh(v5 + p.b8), F.tanh(v5))


Seed133b = _fuzz_cell(
    "Seed133b",
    3,
    4,
    3,
    {"w4": (4, 4), "b5": (4,), "w6": (3, 4), "w7": (4, 4), "b8": (4,)},
    _seed133b,
)


def test_fuzz_seed133_stacked_cells_crossed_states():
    _check_fuzz_case([Seed133a, Seed133b], np.random.default_rng(133).standard_normal((5, 2, 1)))


def _seed28a(F, p, x, s0, s1, s2):
    v5 = F.exp(F.tanh((x @ p.w0 + s0 @ p.w1 + p.b2)[..., 0:4]))
    v10 = (x @ p.w3 + v5 @ p.w4 + p.b5)[..., 0:4]
    v12 = v10 @ p.w7
    v14 = F.split(x @ p.w6 + v12, 2, axis=-1)[0]
    return F.tanh(s1 @ p.w9 + p.b10), F.tanh(v12 @ p.w11), F.tanh(v14 @ p.w12)


def _seed28b(F, p, x, s0, s1, s2):
    v5 = F.tanh((x @ p.w1 + s2 @ p.w2 + p.b3) @ p.w6)
    return v5, v5, F.tanh(s2 @ p.w7)


Seed28a = _fuzz_cell(
    "Seed28a",
    1,
    4,
    3,
    {
        "w0": (1, 8),
        "w1": (4, 8),
        "b2": (8,),
        "w3": (1, 8),
        "w4": (4, 8),
        "b5": (8,),
        "w6": (1, 12),
        "w7": (4, 12),
        "w9": (4, 4),
        "b10": (4,),
        "w11": (12, 4),
        "w12": (6, 4),
    },
    _seed28a,
)
Seed28b = _fuzz_cell(
    "Seed28b",
    4,
    1,
    3,
    {"w1": (4, 4), "w2": (1, 4), "b3": (4,), "w6": (4, 1), "w7": (1, 1)},
    _seed28b,
)


def test_fuzz_seed28_float32_stacked_three_state_cells():
    _check_fuzz_case(
        [Seed28a, Seed28b], np.random.default_rng(28).standard_normal((4, 1)), np.float32
    )


def _seed75(F, p, x, s0, s1, s2):  # log(sigmoid) of a 0-d sum, inside a fused group
    v8 = F.exp(F.tanh(F.tanh((x @ p.w0 + s2 @ p.w1 + p.b2)[..., 0:1])))
    return F.tanh(v8), s1, F.tanh(v8 * F.log(F.sigmoid(F.sum(x) * 0.1)))


Seed75 = _fuzz_cell("Seed75", 1, 1, 3, {"w0": (1, 4), "w1": (1, 4), "b2": (4,)}, _seed75)


@pytest.mark.parametrize("batch", [(), (1,), (3,)])
def test_fuzz_seed75_log_sigmoid_of_a_0d_sum(batch):
    _check_fuzz_case([Seed75], np.random.default_rng(75).standard_normal((4,) + batch + (1,)))


Seed55a = _fuzz_cell(
    "Seed55a",
    3,
    4,
    1,
    {"w0": (4, 8)},
    lambda F, p, x, s0: F.tanh(s0 * F.log(F.sigmoid(F.sum(s0 @ p.w0) * 0.1))),
)


def _seed55b(F, p, x, s0):
    v2 = s0 @ p.w1
    return F.tanh(F.split((F.concat([s0, x], axis=-1) @ p.w0 - v2) * v2, 2, axis=-1)[1])


Seed55b = _fuzz_cell("Seed55b", 4, 3, 1, {"w0": (7, 6), "w1": (3, 6)}, _seed55b)


def test_fuzz_seed55_stacked_0d_log_sigmoid():
    _check_fuzz_case([Seed55a, Seed55b], np.random.default_rng(55).standard_normal((3, 3, 3)))


def test_redone_chain_of_tanh_of_sigmoid_in_a_scan_body():
    """A scan body whose backward reads tanh(sigmoid(z)) where z is a ys: both are redone
    (autodiff.redone_cheaply) instead of kept, and the inner one must be placed before the outer
    (the rolled default met it in the cell fuzzer: KeyError in scan_ir.inline)."""
    B, H, T = 2, 3, 4
    rng = np.random.default_rng(3)

    def step(h, x):
        z = x + h
        t = tn.tanh(tn.sigmoid(z))
        return [t * h, z]

    body = tn.trace(step, np.zeros((B, H)), np.zeros((B, H)))

    def f(h0, xs):
        return tn.scan(body, [h0], [xs]).slab.sum()

    h0, xs = rng.standard_normal((B, H)), rng.standard_normal((T, B, H))
    tn.gradcheck(f, h0, xs)
    hs, h = [], h0
    for t in range(T):  # the NumPy equations of the loop
        z = xs[t] + h
        h = np.tanh(1 / (1 + np.exp(-z))) * h
        hs.append(z)
    g = tn.trace(f, h0, xs)
    np.testing.assert_allclose(tn.compile(g)(h0, xs), h.sum() + np.sum(hs), rtol=1e-12)
