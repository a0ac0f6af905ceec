"""The numba loop kernel over a body that reads an xs late (hfix, after merging hnslab with
hpeak6): the Python runner hands such a body copies of the rows it reads after its first
write into its ys rows (scan_run.late_xs); the numba kernel instead writes its rows only
after the step's last computation (LoopKernel.reads_xs_first), so it writes over them under
the same row check (scan_run.writable_over_xs, with hpeak6's looser ops.registry
.rows_writable). GRU (its 3H projection at the end of its 4H rows) and the peephole LSTM,
whose backward bodies read an xs late, at a small-loop shape in float64: values and
gradients equal the NumPy equations (complex-step derivatives) and the NumPy backend, the
checks answered True; a placement the rule refuses, forced, gives wrong numbers."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import PlanOptions, nn
from tapernn.backends import numba_available, numba_program
from tests import cell_reference as ref
from tests.test_dz_in_gates import _pair
from tests.test_numba_slab_plan import _loops, _record_over

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
T, B, H = 8, 20, 16  # (small loops: every body value <= numba_loop.MAX_SIZE)
NUMBA = PlanOptions(backend="numba", dz_in_gates=True)
NUMPY = PlanOptions(backend="numpy", dz_in_gates=True)
CELLS = {
    "GRU": (lambda: nn.GRU(H, H), ref.gru_step, 1),
    "LSTM": (lambda: nn.LSTM(H, H), ref.lstm_step, 2),  # (peephole)
}


@pytest.fixture(autouse=True)
def loop_kernels_alone(monkeypatch):
    monkeypatch.setattr(numba_program, "ENABLED", [False])


def _data():
    rng = np.random.default_rng(3)
    return rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))


def _step(seq, x, g):
    seq.zero_grad_parameters()
    out = np.array(seq.forward(x))
    gx = np.array(seq.backward(x, g))
    return [out, gx] + [p.grad.copy() for p in seq.parameters()]


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_a_body_reading_its_xs_late_equals_the_numpy_equations(cell):
    make, step, n_states = CELLS[cell]
    x, g = _data()
    tn.manual_seed(1)
    m = make()
    params = {k: p.data.copy() for k, p in m.named_parameters().items()}
    want, _ = ref.run(step, params, x, n_states, H)
    grads = ref.complex_step_grads(step, params, x, n_states, H, g)
    seq = nn.Sequencer(m).set_plan_options(NUMBA)
    other = nn.Sequencer(make()).set_plan_options(NUMPY)
    for p, q in zip(other.parameters(), seq.parameters()):
        p.data[...] = q.data
    seen: dict = {}
    for k in range(2):  # (the second forward after a backward that overwrote the gate rows)
        got = _step(seq, x, g)
        np.testing.assert_allclose(got[0], want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[1], grads["input"], rtol=1e-10, atol=1e-12)
        for (name, _), grad in zip(m.named_parameters().items(), got[2:]):
            np.testing.assert_allclose(grad, grads[name], rtol=1e-10, atol=1e-12)
        for u, v in zip(got, _step(other, x, g)):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
        if k == 0:
            pair = _pair(seq)
            assert pair.backward.program.plan.donated
            ((sw, rep),) = _loops(pair.backward)
            assert "numba loop kernel" in rep.kernel and sw.handle.reads_xs_first
            # the case: the same body on the Python runner reads an xs late (its copies)
            assert "_alias" in sw.runner.source
            _record_over(seq, seen)
    assert seen == {"forward": [True], "backward": [True]}


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_the_same_rows_without_the_kernels_order_give_wrong_numbers(cell, monkeypatch):
    """The hazard is real at this placement: the same loops on the Python runner (the body's
    own order: ys rows written before an xs is read) without its copies of the late xs give
    wrong gradients; with them, right. The kernel needs no copies: it writes its rows after
    the step's last read."""
    from tapernn import scan_run as run_mod
    from tapernn.backends import numba_loop

    make, _, _ = CELLS[cell]
    x, g = _data()

    def fresh():
        tn.manual_seed(1)
        seq = nn.Sequencer(make()).set_plan_options(NUMBA)
        got = _step(seq, x, g)
        return seq, got

    want = fresh()[1]
    monkeypatch.setattr(numba_loop, "MAX_SIZE", 0)  # (every loop on the Python runner)
    seq, right = fresh()
    assert all("Python loop" in rep.kernel for _, rep in _loops(_pair(seq).backward))
    assert _pair(seq).backward.program.plan.donated
    for u, v in zip(right, want):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(run_mod, "late_xs", lambda *a, **k: [])
    _, wrong = fresh()
    assert not all(np.allclose(u, v) for u, v in zip(wrong[1:], want[1:]))
