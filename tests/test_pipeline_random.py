"""Hypothesis: random unrolled graphs (elementwise, matmuls against shared weights, reductions,
slices, concat; several steps tagged with tracing.step), differentiated, give identical values
after every entry of the DEFAULT pipeline, compiled, and under the reference interpreter."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_check import ANY_SIZE, check_plan

import tapernn as tn
from tapernn import tracing
from tapernn.interpret import interpret

B, D = 3, 4

# per-step ops on the state h (B, D), the step input x_t (B, D) and shared weights W, U (D, D)
STEP_OPS = [
    lambda h, x, w, u: tn.tanh(x @ w + h @ u),
    lambda h, x, w, u: tn.sigmoid(x @ w) * h + x @ u,
    lambda h, x, w, u: h * tn.sum(x, axis=1, keepdims=True) - tn.mean(h, axis=0),
    lambda h, x, w, u: tn.concat([h[:, :2], (x @ w)[:, 2:]], axis=1),
    lambda h, x, w, u: tn.maximum(h, x) + tn.transpose(w)[0],
    lambda h, x, w, u: tn.exp(tn.tanh(h)) * (x @ tn.transpose(u)),
    lambda h, x, w, u: tn.reshape(tn.reshape(h, (D, B)) * 0.5, (B, D)) + x,
    lambda h, x, w, u: h + x @ w + x @ u,  # two projections of x_t: gate fusion material
]


def build(ops, T):
    def f(x, w, u, h):
        total = None
        for t in range(T):
            with tracing.step(t):
                for k in ops:
                    h = STEP_OPS[k](h, x[t], w, u)
                term = tn.sum(h * h) * 0.01
                total = term if total is None else total + term
        return total

    return f


@settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    ops=st.lists(st.integers(0, len(STEP_OPS) - 1), min_size=1, max_size=4),
    T=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_default_pipeline_preserves_values_and_gradients(ops, T, seed):
    rng = np.random.default_rng(seed)
    arrays = [
        rng.standard_normal((T, B, D)),
        rng.standard_normal((D, D)) * 0.5,
        rng.standard_normal((D, D)) * 0.5,
        rng.standard_normal((B, D)),
    ]
    g = tn.grad(tn.trace(build(ops, T), *arrays))
    expected = interpret(g, *arrays)
    stages = []  # every entry of DEFAULT, at its place, against the reference interpreter
    compiled = tn.compile(g, options=ANY_SIZE, dump=lambda k, name, s: stages.append((name, s)))
    for name, stage in stages:
        for a, b in zip(interpret(stage, *arrays), expected):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12, err_msg=name)
    check_plan(compiled.graph, compiled.program.plan)  # regions, in place, placed pieces
    got = compiled(*arrays)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    again = compiled(*arrays)  # buffers reused across calls give the same answers
    for a, b in zip(again, got):
        np.testing.assert_array_equal(a, b)
    assert compiled.report.kernels <= len(g.nodes)


@settings(
    max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    ops=st.lists(st.integers(0, len(STEP_OPS) - 1), min_size=1, max_size=4),
    T=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_numba_backend_agrees_with_numpy_and_the_interpreter(ops, T, seed):
    """The same random graphs and gradients lowered by both backends (fewer examples: each new
    fused group is a numba compilation, ~1 s cold)."""
    from tapernn.backends import numba_available

    if not numba_available():
        return
    rng = np.random.default_rng(seed)
    arrays = [
        rng.standard_normal((T, B, D)),
        rng.standard_normal((D, D)) * 0.5,
        rng.standard_normal((D, D)) * 0.5,
        rng.standard_normal((B, D)),
    ]
    g = tn.grad(tn.trace(build(ops, T), *arrays))
    expected = interpret(g, *arrays)
    by_numpy = tn.compile(g, options=ANY_SIZE, backend="numpy")(*arrays)
    compiled = tn.compile(g, options=ANY_SIZE, backend="numba")
    assert not compiled.report.fallbacks
    for a, b, c in zip(compiled(*arrays), by_numpy, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a, c, rtol=1e-11, atol=1e-12)
