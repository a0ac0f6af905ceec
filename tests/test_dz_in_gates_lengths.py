"""PlanOptions.dz_in_gates with lengths= and need_grad_input=False (tests/test_dz_in_gates.py's
cases; a file of its own so that --dist loadfile can run it beside the rest: on numba with a cold
kernel cache each file is minutes of compiles): values and gradients equal with the donation on
and off and to unroll=True, in float64 at 1e-12, on both backends."""

import pytest
from test_dz_in_gates import UNROLLED_REF, _run, _same

from tapernn import PlanOptions


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM"])
def test_lengths_and_need_grad_input_false(cell, backend):
    on = PlanOptions(backend=backend, dz_in_gates=True)
    off = PlanOptions(backend=backend, dz_in_gates=False)
    for kw in ({"lengths": True}, {"grad_input": False}, {"lengths": True, "chunks": 3}):
        _, got = _run(cell, on, **kw)
        _same(got, _run(cell, off, **kw)[1])
        _same(got, _run(cell, UNROLLED_REF, unroll=True, **kw)[1])
