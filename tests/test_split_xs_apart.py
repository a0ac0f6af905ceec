"""hxs: a loop's hoisted input projection NARROWER than its rows (the built-in GRU's 3H under its
rows, API.md's MGU after split_concat_matmuls) was computed into the loop's slab
(PlanOptions.xs_in_slab) where one batch half's projection rows lay in the other half's rows,
so scan_split.SplitRunner._apart refused every call and the forward ran unsplit (fails on the
main before the fix: 0 forward split calls). The planner now places such a projection into the
slab only where the loop cannot split (regions._split_rows): the forward splits, with the same
values (the NumPy equations) and gradients (the unsplit loop, its projection in the slab).
(numba: ~10 s of kernel compiles with an empty kernel cache.)"""

import numpy as np
import pytest
from cell_reference import gru_step
from test_batch_split import steps
from test_split_concat import MGU, mgu_step_numpy

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_available
from tapernn.scan_split import SplitRunner

B = 16  # (two halves of 8 rows, "auto"'s minimum)
# (T, H) per cell: the smallest seen whose projection main placed into the slab
CELLS = {"gru": (nn.GRU, gru_step, 6, 256), "mgu": (MGU, mgu_step_numpy, 4, 128)}


def _model(cell, backend, split):
    tn.manual_seed(1)
    H = CELLS[cell][3]
    m = nn.Sequencer(CELLS[cell][0](H, H))
    opts = tn.PlanOptions(backend=backend, layout="batch", own_threads="off", batch_split=split)
    return m.set_plan_options(opts)


def _train(m, x, g):
    m.zero_grad_parameters()
    y, gx = np.array(m.forward(x)), np.array(m.backward(x, g))
    return [y, gx] + [p.grad.copy() for p in m.parameters()]


def _equations(m, cell, x):
    params = {n.split(".")[-1]: p.data for n, p in m.named_parameters().items()}
    return steps(CELLS[cell][1], params, x, (np.zeros((B, CELLS[cell][3])),))[0]


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.usefixtures("packed_on", "numba_now")
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_narrower_projection_lets_the_forward_split(cell, rng, monkeypatch):
    ran = []  # per split call: whether it was the reverse (backward) loop
    halves = SplitRunner._halves

    def counted(self, *args, **kw):
        ran.append(bool(self.attrs["reverse"]))
        return halves(self, *args, **kw)

    monkeypatch.setattr(SplitRunner, "_halves", counted)
    split, unsplit = _model(cell, "numba", "on"), _model(cell, "numba", "off")
    T, H = CELLS[cell][2:]
    for _ in range(3):  # (call 1 runs the full loop while the halves are made, then splits)
        x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
        got, want = _train(split, x, g), _train(unsplit, x, g)
        np.testing.assert_allclose(got[0], _equations(split, cell, x), rtol=0, atol=1e-12)
        for k, (a, b) in enumerate(zip(got, want)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=str(k))
    assert ran.count(False) >= 2, ran  # the forward split from call 2 on (main: never)
    lines = [loop.kernel for loop in split.compile_report().loops]
    assert all("batch split over 2 threads" in k for k in lines), lines
    assert not any("run unsplit" in k for k in lines), lines


def test_on_the_numpy_backend_the_projection_stays_in_the_slab(rng):
    """The memory the fix costs is paid only where a loop may split: on the NumPy backend the
    GRU's default plan keeps its projection in the slab (a lower peak than without)."""
    T, H = CELLS["gru"][2:]
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    peaks = {}
    for slab in (True, False):
        m = _model("gru", "numpy", "auto")
        if not slab:
            m.set_plan_options(tn.PlanOptions(backend="numpy", layout="batch", xs_in_slab=False))
        got = _train(m, x, g)
        np.testing.assert_allclose(got[0], _equations(m, "gru", x), rtol=0, atol=1e-12)
        peaks[slab] = m.compile_report().peak_bytes
    assert peaks[True] < peaks[False], peaks
