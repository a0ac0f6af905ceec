"""The packed recurrent GEMM (scan_pack.py, backends/packed*.py, issue 19): on the numba backend a
rolled loop's step GEMMs over a large loop-invariant weight read the weight packed once per loop
call; the microkernel equals np.matmul within the rounding error bound on odd shapes, and whole
training steps equal the unpacked program and the NumPy equations. (On AVX2 CPUs too: the
module forces the packed path, conftest.packed_on.)"""

import numpy as np
import pytest
from cell_reference import fastlstm_step, gru_step, run

import tapernn as tn
from tapernn import nn, scan_pack
from tapernn.backends import numba_available
from tapernn.backends.packed import PackedSite, pack_panels, panel_width, run_kernel
from tapernn.errors import TapernnError
from tapernn.interpret import interpret

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")
pytestmark = pytest.mark.usefixtures("packed_on")
SHAPES = [(1, 1, 1), (3, 7, 5), (4, 64, 64), (5, 300, 70), (32, 256, 1024), (33, 250, 1000)]


def within_rounding(got, a, w):
    """|got - a @ w| <= k * u * (|a| @ |w|) elementwise, u the unit roundoff of got's dtype and
    a @ w taken in float64 (float32: exact enough; float64: its own error, k * u * ..., is
    counted twice): the worst-case bound of any order of the k products' sum (with or without
    FMA), so it holds for every summation order, where a relative tolerance fails on an element
    whose terms cancel."""
    k = a.shape[1]
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    u = np.finfo(got.dtype).eps / 2
    bound = (2 if got.dtype == np.float64 else 1) * k * u * (np.abs(a64) @ np.abs(w64))
    err = np.abs(got.astype(np.float64) - a64 @ w64)
    assert np.all(err <= bound + np.finfo(got.dtype).tiny), np.max(err - bound)


def test_pack_panels_layout():
    w = np.arange(7 * 70, dtype=np.float64).reshape(7, 70)
    p = pack_panels(w)
    nr = panel_width(np.float64)
    assert nr == 32 and panel_width(np.float32) == 64
    assert p.shape == (3, 7, 32) and p.flags.c_contiguous
    for j in range(3):
        cols = w[:, j * nr : (j + 1) * nr]
        np.testing.assert_array_equal(p[j, :, : cols.shape[1]], cols)
        np.testing.assert_array_equal(p[j, :, cols.shape[1] :], 0)
    np.testing.assert_array_equal(pack_panels(w.T.copy().T, nr=8)[1], w[:, 8:16])  # a view


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_equals_matmul_on_odd_shapes(dtype, threads, monkeypatch):
    from tapernn.backends import packed

    monkeypatch.setattr(packed, "_threads", lambda: threads)
    monkeypatch.setattr(packed, "PARALLEL", True)  # (opt-in: $TAPERNN_PACKED_PARALLEL)
    rng = np.random.default_rng(0)
    key = ((np.dtype(dtype).str,),)
    packed._HANDLE.prepare(key)
    packed._PARALLEL.prepare(key)  # (else made in the background worker)
    kernel = packed._HANDLE.kernel
    assert kernel is not None, packed._HANDLE.error
    assert key in packed._PARALLEL.types, packed._PARALLEL.error
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k)).astype(dtype)
        w = rng.standard_normal((k, n)).astype(dtype)
        out = np.full((m, n), np.nan, dtype)
        assert run_kernel(kernel, a, pack_panels(w), out) is out
        within_rounding(out, a, w)
        # the serial and the parallel driver: the same bits (either may run: packed.py)
        serial = np.empty_like(out)
        kernel(a, pack_panels(w), serial)
        np.testing.assert_array_equal(out, serial)
    # strided operands: a transposed `a`, a column block of a wider `out`
    a = rng.standard_normal((40, 6)).astype(dtype).T
    w = rng.standard_normal((40, 70)).astype(dtype)
    big = np.zeros((6, 100), dtype)
    run_kernel(kernel, a, pack_panels(w), big[:, 10:80])
    within_rounding(big[:, 10:80], a, w)
    assert not big[:, :10].any() and not big[:, 80:].any()
    with pytest.raises(TapernnError, match="panels"):  # other panels than the kernel's: refused
        run_kernel(kernel, a, pack_panels(w, nr=8), big[:, 10:80])


@needs_numba
def test_site_runs_numpy_until_the_switch_call(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    rng = np.random.default_rng(1)
    a, w = rng.standard_normal((4, 8)), rng.standard_normal((8, 40))
    site = PackedSite()
    site(a, w, pack_panels(w))  # call 1: NumPy, the kernel requested
    assert site.kernel is None
    np.testing.assert_allclose(site(a, w, pack_panels(w)), a @ w, rtol=1e-12)  # call 2: waits
    assert site.kernel is not None


def _step(m, x, g):
    m.zero_grad_parameters()
    y = np.array(m.forward(x))
    gx = np.array(m.backward(x, g))
    return [y, gx] + [p.grad.copy() for p in m.parameters()]


# (GRU at H = 200: [W_hr W_hz] (200, 400) packed, W_hn (200, 200) under MIN_ELEMENTS: OpenBLAS)
CELLS = {"fastlstm": (nn.FastLSTM, fastlstm_step, 2, 130), "gru": (nn.GRU, gru_step, 1, 200)}


@needs_numba
@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("layout", ["batch", "auto"])
def test_training_step_equals_unpacked_and_numpy_equations(name, layout, rng, monkeypatch):
    """B = 5 (not a multiple of the microkernel's 4 rows); FastLSTM H = 130: W (130, 520),
    67,600 elements (packed), N = 520 not a multiple of the 32-column float64 panels."""
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    make, step, n_states, H = CELLS[name]
    D, B, T = 3, 5, 4
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        results, flops = {}, {}
        for packed in (True, False):
            tn.manual_seed(0)
            m = nn.Sequencer(make(D, H))
            m.set_plan_options(tn.PlanOptions(layout=layout, packed_gemm=packed))
            first = _step(m, x, g)
            for p in m.parameters():  # the next call packs the changed weights
                p.data[...] += 0.01
            results[packed] = [first, _step(m, x, g)]
            flops[packed] = [loop.largest_gemm_flops for loop in m.compile_report().loops]
            notes = [n for loop in m.compile_report().loops for n in loop.body.notes]
            packed_note = any("packed once" in n for n in notes)
            if layout == "batch":  # ("auto" may hold the states feature-major: W @ h, unpacked)
                assert packed_note == packed, notes
            if packed:
                params = {
                    k.split(".", 1)[1]: p.data - 0.01 for k, p in m.named_parameters().items()
                }
    finally:
        tn.set_backend(before)
    assert flops[True] == flops[False]  # the packed GEMMs count for the BLAS thread choice
    for got, want in zip(results[True], results[False]):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    eq, _ = run(step, params, x, n_states, H)
    np.testing.assert_allclose(results[True][0][0], eq, rtol=1e-12, atol=1e-12)


@needs_numba
def test_float32_packed_step_equals_float64(rng, monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    D, H, B, T = 3, 128, 7, 5
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        tn.manual_seed(0)
        m64 = nn.Sequencer(nn.FastLSTM(D, H))
        m64.set_plan_options(tn.PlanOptions(layout="batch", packed_gemm=False))
        tn.manual_seed(0)
        m32 = nn.Sequencer(nn.FastLSTM(D, H)).astype(np.float32)
        m32.set_plan_options(tn.PlanOptions(layout="batch"))
        got = _step(m32, x.astype(np.float32), g.astype(np.float32))
        notes = [n for loop in m32.compile_report().loops for n in loop.body.notes]
        assert any("packed once" in n for n in notes), notes
        want = _step(m64, x, g)
    finally:
        tn.set_backend(before)
    for a, b in zip(got, want):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


def test_pass_structure_and_interpreter():
    """pack_loop_weights on a user scan body h' = tanh(x + h @ W): one pack_panels per weight,
    the product's forward (the reference interpreter's) equals the original graph."""
    rng = np.random.default_rng(3)
    h0, x0 = rng.standard_normal((3, 256)), rng.standard_normal((3, 256))
    w = rng.standard_normal((256, 256))
    body = tn.trace(lambda h, x, u: [tn.tanh(x + h @ u + h @ u * 0.5)], h0, x0, w)
    invariant = {body.inputs[2]}
    packed = scan_pack.pack_loop_weights(body, invariant)
    ops = packed.op_counts()
    assert ops.get("pack_panels") == 1 and ops.get("packed_matmul") == 2 and "matmul" not in ops
    np.testing.assert_allclose(
        interpret(packed, h0, x0, w)[0], interpret(body, h0, x0, w)[0], rtol=1e-13
    )
    small = tn.trace(lambda h, u: [h @ u], h0[:, :8], w[:8, :8])
    assert scan_pack.pack_loop_weights(small, {small.inputs[1]}) is small  # under MIN_ELEMENTS
    assert scan_pack.pack_loop_weights(body, set()) is body  # no invariant weight


@needs_numba
def test_concurrent_calls_from_two_threads(monkeypatch):
    """Two Python threads running the parallel driver at once (numba's omp layer; the kernel
    releases the GIL): each gets its own product."""
    import threading

    from tapernn.backends import packed

    monkeypatch.setattr(packed, "_threads", lambda: 2)
    monkeypatch.setattr(packed, "PARALLEL", True)  # (opt-in: $TAPERNN_PACKED_PARALLEL)
    key = ((np.dtype(np.float64).str,),)
    packed._HANDLE.prepare(key)
    packed._PARALLEL.prepare(key)
    kernel = packed._HANDLE.kernel
    rng = np.random.default_rng(5)
    jobs = []
    for _ in range(4):
        a, w = rng.standard_normal((33, 200)), rng.standard_normal((200, 300))
        jobs.append((a, pack_panels(w), np.empty((33, 300)), a @ w))
    errors = []

    def work(job):
        a, panels, out, want = job
        try:
            for _ in range(50):
                run_kernel(kernel, a, panels, out)
                np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@needs_numba
def test_the_parallel_driver_is_opt_in(monkeypatch):
    """With the pool at two threads and the parallel driver compiled, the default runs the
    serial driver (numba's OpenMP pool slowed the process's other libraries: packed.PARALLEL)."""
    from tapernn.backends import packed

    monkeypatch.setattr(packed, "_threads", lambda: 2)
    key = ((np.dtype(np.float64).str,),)
    packed._HANDLE.prepare(key)
    monkeypatch.setattr(packed._PARALLEL, "types", {key})

    def parallel(*args):
        raise AssertionError("the parallel driver ran")

    monkeypatch.setattr(packed._PARALLEL, "kernel", parallel)
    a, w = np.ones((3, 4)), np.ones((4, 64))  # (several panels: two threads get work)
    out = run_kernel(packed._HANDLE.kernel, a, pack_panels(w), np.empty((3, 64)))
    np.testing.assert_array_equal(out, a @ w)
    monkeypatch.setattr(packed, "PARALLEL", True)
    with pytest.raises(AssertionError, match="parallel driver ran"):
        run_kernel(packed._HANDLE.kernel, a, pack_panels(w), np.empty((3, 64)))
