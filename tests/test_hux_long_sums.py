"""A long sum in a generated program (hux): `nn.SeqGRU` over 101 steps or more failed to compile with
Python's SyntaxError "too many nested parentheses" -- its weight gradient's add_n of one term per
step was lowered as np.add calls nested one per term, past the parser's 200 levels."""

import functools

import numpy as np
from seq_reference import seqgru

import tapernn as tn
from tapernn import nn
from tapernn.interpret import interpret


def test_an_add_n_of_300_terms_compiles_and_adds_in_order():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 3)) for _ in range(300)]
    graph = tn.trace(lambda *vs: tn.tanh(tn.add_n(list(vs))), *xs)  # (the sum into a buffer)
    got = tn.compile(graph)(*xs)
    want = np.tanh(functools.reduce(np.add, xs))  # NumPy's adds, left to right
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, interpret(graph, *xs)[0])


def test_seqgru_over_101_steps_matches_the_numpy_equations():
    T, B, D, H = 101, 2, 3, 4
    tn.manual_seed(0)
    m = nn.SeqGRU(D, H)
    rng = np.random.default_rng(1)
    x, seed = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    y = m.forward(x)
    m.backward(x, seed)
    w, b = m.weight.data, m.bias.data
    np.testing.assert_allclose(y, seqgru({"weight": w, "bias": b}, x, np.zeros((B, H))), atol=1e-12)
    # the weight gradient along a random direction V, by one complex step of the equations
    v, eps = rng.standard_normal(w.shape), 1e-30
    stepped = seqgru({"weight": w + 1j * eps * v, "bias": b}, x, np.zeros((B, H)))
    assert abs(np.sum(m.weight.grad * v) - np.sum(seed * stepped).imag / eps) < 1e-10
