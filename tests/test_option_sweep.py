"""Each compile option and each pass of passes.DEFAULT left out, on a stacked masked model with
lengths= and remember, rolled, on the NumPy backend: the same values as NumPy equations
(tests/option_sweep.py; `python tools/sweep_options.py --backend numba --hidden 128 --batch 17`
runs the numba fast paths and unroll=True too). A wrong result must fail the sweep's check."""

from __future__ import annotations

import numpy as np
import pytest
from option_sweep import TOGGLES, cases, dropped, run

CASE = cases()["stacked masked"]


@pytest.mark.parametrize("options", TOGGLES, ids=lambda t: ",".join(t) or "defaults")
def test_each_plan_option(options):
    run(CASE, "numpy", options)


@pytest.mark.parametrize("what, passes", dropped(), ids=[w for w, _ in dropped()])
def test_each_pass_left_out(what, passes):
    run(CASE, "numpy", {}, None, passes)


def test_unrolled_with_the_default_passes():
    run(CASE, "numpy", {}, True)


def test_the_sweep_fails_on_a_wrong_op(monkeypatch):
    """tanh's forward off by 1e-9: the sweep's check fails (it can fail)."""
    import dataclasses

    from tapernn import backends
    from tapernn.ops import registry

    wrong = dataclasses.replace(
        registry.REGISTRY["tanh"],
        ufunc=None,  # (the NumPy backend's code then calls the op's forward)
        forward=lambda x, out=None: np.add(np.tanh(x), 1e-9, out=out),
    )
    monkeypatch.setitem(registry.REGISTRY, "tanh", wrong)
    monkeypatch.setattr(backends, "_chosen", "numpy")
    with pytest.raises(AssertionError):
        run(CASE, "numpy", {}, True, [])
