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


# A program traced with narrow integer ids took wider ones by casting them to the traced dtype:
# id 257 into a program traced with int8 ids wrapped to 1 and -1 into uint8 to 255, each
# returning another row of the table without a word.


def test_compiled_program_refuses_ids_its_traced_dtype_cannot_hold():
    table = np.arange(600.0).reshape(300, 2)
    for traced, given in [(np.int8, [1, 257]), (np.uint8, [1, -1]), (np.int16, [70000, 0])]:
        program = tn.compile(tn.trace(tn.embedding, table, np.array([1, 2], traced)))
        with pytest.raises(tn.ValueRangeError, match="x1"):
            program(table, np.array(given))
    program = tn.compile(tn.trace(tn.embedding, table, np.array([1, 2], np.int8)))
    np.testing.assert_array_equal(program(table, np.array([5, 127])), table[[5, 127]])
    wide = tn.compile(tn.trace(tn.embedding, table, np.array([1, 2])))  # (int64: any id fits)
    np.testing.assert_array_equal(wide(table, np.array([299, 0], np.uint16)), table[[299, 0]])
