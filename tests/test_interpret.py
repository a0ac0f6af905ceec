"""The reference interpreter: hand-written NumPy equations, and why it is the oracle -- a bug
in the code generator cancels out when the compiler is compared with itself, not here."""

import dataclasses

import numpy as np
import pytest

import tapernn as tn
from tapernn.errors import TapernnError
from tapernn.interpret import interpret
from tapernn.ops.registry import REGISTRY


def test_interpret_matches_numpy_equations(rng):
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))

    def f(x, w):
        h = tn.tanh(x @ w)
        return tn.sum(h * tn.sigmoid(h), axis=1), tn.concat([h, x[:, :2]], axis=0)

    g = tn.grad(tn.trace(f, x, w))
    seeds = [rng.standard_normal(3), rng.standard_normal((6, 2))]
    y, cat, dx, dw = interpret(g, x, w, *seeds)
    h = np.tanh(x @ w)
    s = 1 / (1 + np.exp(-h))
    np.testing.assert_allclose(y, (h * s).sum(1), rtol=1e-14)
    np.testing.assert_allclose(cat, np.concatenate([h, x[:, :2]]), rtol=1e-14)
    dh = seeds[0][:, None] * (s + h * s * (1 - s)) + seeds[1][:3]
    dz = dh * (1 - h * h)
    np.testing.assert_allclose(dw, x.T @ dz, rtol=1e-12)
    dx_direct = np.zeros_like(x)
    dx_direct[:, :2] = seeds[1][3:]
    np.testing.assert_allclose(dx, dz @ w.T + dx_direct, rtol=1e-12)


def test_interpret_checks_its_arguments_and_the_recorded_types():
    g = tn.trace(lambda x: tn.exp(x), np.ones(3))
    with pytest.raises(TapernnError, match="takes 1 arrays, got 2"):
        interpret(g, np.ones(3), np.ones(3))
    g.nodes[1] = g.nodes[1].replace(shape=(4,))
    g.outputs[0] = g.nodes[1]
    with pytest.raises(tn.GraphError, match=r"exp gave \(3,\) float64, the node records \(4,\)"):
        interpret(g, np.ones(3))


def test_a_lowering_bug_cancels_in_a_self_comparison_but_not_against_the_interpreter(
    rng, monkeypatch
):
    x = rng.standard_normal(5)
    g = tn.trace(lambda x: tn.tanh(x) * 2.0, x)
    wrong = dataclasses.replace(REGISTRY["tanh"], ufunc=np.sin)  # a wrong lowering
    monkeypatch.setitem(REGISTRY, "tanh", wrong)
    # (the NumPy backend: the lowering that calls the registry's forwards)
    unoptimised = tn.compile(g, passes=[], backend="numpy")(x)
    optimised = tn.compile(g, backend="numpy")(x)
    np.testing.assert_array_equal(unoptimised, optimised)  # the old oracle: blind to it
    assert not np.allclose(optimised, interpret(g, x)[0])
