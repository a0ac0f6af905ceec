"""A whole-program numba kernel has at most two specialisations per dtype: inputs all
C-contiguous, and all of layout "A" for calls passing any other layout (F, strided, batch-major
memory) -- each combination was a cold compile of its own (1-4 s; tests/test_hunt_hqa8.py's
layout test compiled 9 kernels per cell, now 4). Results equal the NumPy backend's."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_available
from tests.sizes import B, D, H

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


def _layouts(a):
    wide = np.zeros(a.shape[:2] + (2 * a.shape[2],))
    wide[:, :, ::2] = a
    return {
        "C": a,
        "F": np.asfortranarray(a),
        "strided": wide[:, :, ::2],
        "batch-major memory": a.transpose(1, 0, 2).copy().transpose(1, 0, 2),
    }


@pytest.mark.parametrize("first", ["C", "F"])
def test_every_other_layout_runs_one_general_specialisation(first, monkeypatch):
    from tapernn.backends import numba_program

    monkeypatch.setattr(numba_program, "_programs", {})
    rng = np.random.default_rng(3)
    # (the shared sizes, tests/sizes.py: the C-contiguous programs are test_cells' batched
    # FastLSTM ones; the "A" specialisation is this test's own)
    x, g = rng.standard_normal((4, B, D)), rng.standard_normal((4, B, H))
    tn.manual_seed(0)
    ref = nn.Sequencer(nn.FastLSTM(D, H))
    ref.set_plan_options(tn.PlanOptions(backend="numpy"))
    want_y, want_gi = ref.forward(x), ref.backward(x, g)
    want_grads = [p.grad.copy() for p in ref.parameters()]
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(D, H))
    m.set_plan_options(tn.PlanOptions(backend="numba"))
    xs, gs = _layouts(x), _layouts(g)
    order = [first, "C", "F", "strided", "batch-major memory", "C", "F"]
    for k, name in enumerate(order):
        m.zero_grad_parameters()
        y, gi = m.forward(xs[name]), m.backward(xs[name], gs[name])
        np.testing.assert_allclose(y, want_y, rtol=0, atol=1e-12, err_msg=f"{name} call {k}")
        np.testing.assert_allclose(gi, want_gi, rtol=0, atol=1e-12, err_msg=f"{name} call {k}")
        for p, w in zip(m.parameters(), want_grads):
            np.testing.assert_allclose(p.grad, w, rtol=0, atol=1e-12, err_msg=f"{name} call {k}")
    handles = list(numba_program._programs.values())
    assert len(handles) == 2  # (forward and backward)
    for handle in handles:
        layouts = sorted(
            {
                arg.layout
                for sig in handle.kernel.signatures
                for arg in sig[handle.inputs]
                if arg.ndim
            }
        )
        assert len(handle.kernel.signatures) == 2, handle.kernel.signatures
        assert layouts == ["A", "C"]
