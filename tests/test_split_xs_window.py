"""A loop's hoisted input projection NARROWER than its batch rows (the built-in GRU's 3H under its
4H rows; API.md's MGU after split_concat_matmuls: 2H under 3H) lies in the loop's slab
(PlanOptions.xs_in_slab) as a strided window over each batch row's last columns
(regions._candidates), so each batch half's projection rows lie in that half's own rows and the
forward loop splits (main placed it contiguously at the rows' end, across both halves' rows:
scan_split.SplitRunner._apart refused every call, 0 forward split calls). Equivalence: the
forward to the NumPy equations, every output and gradient to the unrolled NumPy model (no loop,
no slab), float64 at 1e-12, both backends, both layouts. (numba: ~15 s of kernel compiles with an
empty kernel cache; warm ~5 s.)"""

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
# per cell (its class, its equations, T, H): the smallest seen whose projection main placed in
# the slab across the halves' rows
CELLS = {"gru": (nn.GRU, gru_step, 6, 256), "mgu": (MGU, mgu_step_numpy, 4, 128)}


def _model(cell, unroll=False, **options):
    tn.manual_seed(1)
    H = CELLS[cell][3]
    m = nn.Sequencer(CELLS[cell][0](H, H), unroll=unroll)
    return m.set_plan_options(tn.PlanOptions(own_threads="off", **options))


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
def test_a_narrower_projection_in_the_slab_lets_the_forward_split(cell, rng, monkeypatch):
    ran = []  # per split call: whether it was the reverse (backward) loop
    halves = SplitRunner._halves

    def counted(self, *args, **kw):
        ran.append(bool(self.attrs["reverse"]))
        return halves(self, *args, **kw)

    monkeypatch.setattr(SplitRunner, "_halves", counted)
    inside = []  # per forward call that reached the halves' test: its xs in the slab
    apart = SplitRunner._apart

    def seen(self, slab, xs, ys):
        if not self.attrs["reverse"]:
            inside.append(any(np.may_share_memory(x, slab) for x in xs))
        return apart(self, slab, xs, ys)

    monkeypatch.setattr(SplitRunner, "_apart", seen)
    split = _model(cell, backend="numba", layout="batch", batch_split="on")
    oracle = _model(cell, unroll=True, backend="numpy", layout="batch")
    T, H = CELLS[cell][2:]
    for _ in range(3):  # (call 1 runs the full loop while the halves are made, then splits)
        x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
        got, want = _train(split, x, g), _train(oracle, x, g)
        np.testing.assert_allclose(got[0], _equations(split, cell, x), rtol=0, atol=1e-12)
        for k, (a, b) in enumerate(zip(got, want)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=str(k))
    assert ran.count(False) >= 2, ran  # the forward split from call 2 on (main: never)
    lines = [loop.kernel for loop in split.compile_report().loops]
    assert all("batch split over 2 threads" in k for k in lines), lines
    assert not any("run unsplit" in k for k in lines), lines
    # ... with the projection in the slab, no memory of its own (hxs's fix took it out)
    assert len(inside) >= 2 and all(inside), inside


@pytest.mark.parametrize("layout", ["batch", "feature"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_the_window_in_the_slab_equals_the_equations(cell, backend, layout, rng):
    """The projection in the slab (batch-major: the strided window; feature-major, whose loop
    rows are no batch rows: at the rows' end): values and gradients equal, the compile report's
    peak not above the same model's with xs_in_slab=False."""
    if backend == "numba" and not numba_available():
        pytest.skip("numba not installed")
    T, H = CELLS[cell][2:]
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    want = _train(_model(cell, unroll=True, backend="numpy", layout=layout), x, g)
    peaks = {}
    for slab in (True, False):
        m = _model(cell, backend=backend, layout=layout, xs_in_slab=slab)
        got = _train(m, x, g)
        np.testing.assert_allclose(got[0], _equations(m, cell, x), rtol=0, atol=1e-12)
        for k, (a, b) in enumerate(zip(got, want)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=str(k))
        peaks[slab] = m.compile_report().peak_bytes
    assert peaks[True] <= peaks[False], peaks
