"""QA round as a user (hqa27): a compiled program called with the wrong number of arrays raised
the base TapernnError; every bad input is a subclass saying what kind of mistake it is
(ArgumentError, also a ValueError, as NumPy's for a wrong argument count)."""

import numpy as np
import pytest

import tapernn as tn


def test_compiled_program_with_too_few_or_too_many_arrays():
    a, b = np.ones((2, 3)), np.ones((3, 4))
    program = tn.compile(tn.trace(lambda x, y: tn.sum(tn.tanh(x @ y)), a, b))
    for arrays in [(a,), (a, b, b), ()]:
        with pytest.raises(tn.ArgumentError, match=r"takes 2 arrays \['x0', 'x1'\], got"):
            program(*arrays)
    seeded = tn.compile(tn.grad(tn.trace(lambda x, y: tn.tanh(x @ y), a, b)))
    with pytest.raises(ValueError, match="grad_out0"):  # (the seed is an argument too)
        seeded(a, b)
    assert float(program(a, b)) == pytest.approx(np.tanh(a @ b).sum())
