"""The native column split (backends/step_columns.py, issue 19): both threads of an owned call run
one compiled step loop, each its panels of every step GEMM for all rows, a barrier pair a GEMM.
Native columns = batch halves = the unsplit loop bit for bit (float64 and float32, odd and even
batches) = the NumPy equations and the reference interpreter (float64, 1e-12); the report's line
says it runs and a counter shows it did; a side that fails makes the other return at its barrier
(Aborted, a TapernnError) instead of hanging, the failure is raised and the next call runs."""

import threading

import numpy as np
import pytest
from cell_reference import fastlstm_step
from test_batch_split import TOL, D, check_equations, equal, train

import tapernn as tn
from tapernn import nn, own_threads, scan_columns
from tapernn.backends import numba_available, step_columns
from tapernn.blas_bits import blas_bits
from tapernn.errors import TapernnError

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
    pytest.mark.usefixtures("numba_now"),  # (conftest: kernels compiled at first calls)
]
T, H = 4, 256  # (every step GEMM packed, every gate kernel numba's: the step loops translate)
NATIVE = "native columns"


NATIVES: dict[int, bool] = {}  # id(model) -> its loops run native columns


def model(native, dtype="float64", split="on"):
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(D, H)).astype(dtype)
    m.set_plan_options(tn.PlanOptions(layout="batch", batch_split=split, own_threads="on"))
    NATIVES[id(m)] = native
    return m


def fit(m, x, g):
    """test_batch_split.train with the model's rule (read when its loops compile: the first)."""
    scan_columns.MIN_BYTES = 0 if NATIVES[id(m)] else 1 << 62
    return train(m, x, g)


@pytest.fixture(autouse=True)
def rule_after(monkeypatch):
    monkeypatch.setattr(scan_columns, "MIN_BYTES", scan_columns.MIN_BYTES)  # (restored after)
    monkeypatch.setattr(scan_columns, "_l3", [0])  # (MIN_BYTES alone, whatever this CPU's L3)


def lines(m):
    return [loop.kernel for loop in m.compile_report().loops]


def trained(models, x, g):
    """Each model's training results after two calls with other weights each (the first runs
    the full loop, the second compiles the step loops)."""
    for _ in range(2):
        for m in models:
            fit(m, x, g)
            for p in m.parameters():
                p.data[...] += 0.01
    return [fit(m, x, g) for m in models]


@pytest.mark.parametrize("batch, dtype", [(17, "float64"), (16, "float32")])
def test_native_equals_halves_unsplit_and_equations(batch, dtype, rng):
    x = rng.standard_normal((T, batch, D)).astype(dtype)
    g = rng.standard_normal((T, batch, H)).astype(dtype)
    a, b, c = model(True, dtype), model(False, dtype), model(False, dtype, "off")
    trained([a, b, c], x, g)
    calls = step_columns.CALLS[0]
    got = fit(a, x, g)
    assert step_columns.CALLS[0] - calls == 2  # (the forward and the reverse loop)
    equal(got, fit(b, x, g))
    unsplit = fit(c, x, g)
    if blas_bits(np.dtype(dtype)).rows:
        equal(got, unsplit)
    else:  # (the weight gradients' GEMMs over each half's rows vs all rows: OpenBLAS's row
        # halves change their bits on some CPUs -- the AVX2 EPYC's Haswell kernel, float32)
        equal((*got[:2], {}), (*unsplit[:2], {}))  # (outputs, input gradients: exact)
        tol = TOL if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-6}
        assert got[2].keys() == unsplit[2].keys()
        for k in got[2]:
            np.testing.assert_allclose(got[2][k], unsplit[2][k], **tol, err_msg=k)
    assert all(NATIVE in k for k in lines(a)), lines(a)
    assert not any(NATIVE in k for k in lines(b) + lines(c))
    if dtype == "float64":
        check_equations(a, fastlstm_step, 2, x, g, got, rng)


def test_user_scan_equals_the_reference_interpreter():
    """A tn.scan's loss gradient compiled with native columns = batch halves bit for bit = the
    reference interpreter to 1e-12 (float64)."""
    from scan_bodies import lstm_arrays, lstm_body

    from tapernn.interpret import interpret

    rng = np.random.default_rng(7)
    B = 16
    arrays = lstm_arrays(rng, T, B, D, H)

    def loss(*v):
        r = tn.scan(lstm_body(B, D, H), v[:2], v[2:3], v[3:])
        return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(tn.tanh(r.carries[1]) * r.carries[0])

    graph = tn.grad(tn.trace(loss, *arrays))
    want = interpret(graph, *arrays)
    got = {}
    for native in (True, False):
        scan_columns.MIN_BYTES = 0 if native else 1 << 62
        options = tn.PlanOptions(batch_split="on", layout="batch", own_threads="on")
        compiled = tn.compile(graph, options=options)
        calls = step_columns.CALLS[0]
        for _ in range(3):
            got[native] = [np.array(a) for a in compiled(*arrays)]
        assert (step_columns.CALLS[0] > calls) == native
    for a, b, c in zip(got[True], got[False], want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, **TOL)


def within(seconds, fn):
    """fn()'s exception (or None) when it returned within `seconds`; fails if it did not."""
    out = []

    def run():
        try:
            fn()
            out.append(None)
        except BaseException as e:  # noqa: BLE001 -- the test looks at it
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"no return within {seconds} s: a side hangs at its barrier"
    return out[0]


@pytest.mark.parametrize("failing", [0, 1])  # (the caller's side, the worker's)
def test_a_failing_side_makes_the_other_return(failing, rng, monkeypatch):
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    a, b = model(True), model(False)
    trained([a, b], x, g)
    real = step_columns.ColumnLoop.__call__

    def call(self, *args):
        if self.me == failing:
            raise RuntimeError("side failed")
        return real(self, *args)

    monkeypatch.setattr(step_columns.ColumnLoop, "__call__", call)
    aborts, seen = step_columns.ABORTS[0], []
    monkeypatch.setattr(step_columns, "run_pair", spy(step_columns.run_pair, seen))
    tn.set_blas_threads(2)
    try:
        error = within(60, lambda: fit(a, x, g))
        assert own_threads.blas.limiter.pool_count() == 2  # (the BLAS setting restored)
    finally:
        tn.set_blas_threads("auto")
    assert isinstance(error, RuntimeError) and "side failed" in str(error)
    assert step_columns.ABORTS[0] - aborts == 1  # (the other side returned at its barrier)
    assert seen and isinstance(seen[0][1 - failing], step_columns.Aborted)
    assert issubclass(step_columns.Aborted, TapernnError)
    monkeypatch.setattr(step_columns.ColumnLoop, "__call__", real)
    calls = step_columns.CALLS[0]
    equal(fit(a, x, g), fit(b, x, g))  # (the next call runs, its barrier words zeroed)
    assert step_columns.CALLS[0] - calls == 2


def spy(run_pair, seen):
    """run_pair recording each side's outcome (its value or exception) in `seen`."""

    def wrapped(first, second, submit):
        outcome = [None, None]

        def side(k, bound):
            def run():
                try:
                    outcome[k] = bound()
                except BaseException as e:
                    outcome[k] = e
                    raise
                return outcome[k]

            run.loop = bound.loop
            return run

        try:
            return run_pair(side(0, first), side(1, second), submit)
        finally:
            seen.append(outcome)

    return wrapped


@pytest.mark.parametrize("mr", [8, 0])
def test_rewrite(mr):
    head = "import numpy as np\n_drv = sys.modules['m']._panels\n\n"
    head += "def kernel(length, reverse, lo, hi, a0, c1, b2, _alias):\n"
    loop = "    for _s in range(length):\n        _t = _s\n        v2 = a0\n"
    gemm = "        v3 = _packed(np.ascontiguousarray(v2), c1, b2)\n        a0, = v3,\n"
    text, sites = step_columns.rewrite(head + loop + gemm, {"b2"} if mr else set(), mr)
    assert text.count("_arrive(") == 2 and sites[0].swap == bool(mr)
    if mr:  # (each side packs its rows' blocks; the output's rows are b2 itself)
        assert "_pack_rows(v2, _ca0[lo // 8:(hi + 7) // 8])" in text
        assert "_tiles(_ca0, _co0.shape[0], c1, _co0, " in text and "_put(b2" not in text
    else:  # (each side's rows put into the whole batch's a; b2 a copy of its rows)
        assert "_put(_ca0[lo:hi], v2)" in text and "_drv(_ca0, c1, _co0, " in text
        assert "_put(b2, _co0[lo:hi])" in text
    with pytest.raises(TapernnError, match="no packed GEMM"):
        step_columns.rewrite(head + loop, set(), mr)
