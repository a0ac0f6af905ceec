"""conftest's `_backend_restored`: a test that leaves tn.set_backend changed does not change the
next test's backend (a leaked "numba" once made test_kernel_alone's plain compile call numba's
lone-op lowering in CI). The two tests run in this order (a file's tests keep their order)."""

import os

import tapernn as tn


def test_a_test_that_sets_another_backend_and_does_not_set_it_back():
    other = "numpy" if os.environ["TAPERNN_BACKEND"] != "numpy" else "numba"
    tn.set_backend(other)
    assert tn.get_backend() == other


def test_the_next_test_runs_on_the_sessions_backend():
    assert tn.get_backend() == os.environ["TAPERNN_BACKEND"]
