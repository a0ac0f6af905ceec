"""QA round hqa28: the functional API (tn.trace / tn.grad / tn.compile) as a researcher uses it."""

import numpy as np

import tapernn as tn


def test_a_captured_array_changed_after_compile_gives_one_consistent_answer():
    x = np.random.default_rng(0).standard_normal((3, 4))
    w = np.random.default_rng(1).standard_normal((4, 2))
    plain = tn.compile(tn.trace(lambda a: a @ w, x))
    folded = tn.compile(tn.trace(lambda a: a @ tn.tanh(w), x))
    before = plain(x).copy(), folded(x).copy()
    w[...] = 0.0
    after = plain(x), folded(x)
    changed = [not np.array_equal(b, a) for b, a in zip(before, after)]
    assert changed[0] == changed[1], "one program reads the array live, the other its old value"
