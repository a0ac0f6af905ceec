"""The time-batched GEMM into a fresh loop slab through the packed kernel, its panels in the slab's
unwritten bytes (own_room.py, PlanOptions.gemm_in_slab, issue 19): the rewrite of the program
text (which lines, and which not), where the panels go, RoomGemm against np.matmul (+ bias) with
the rest of the slab untouched, the fallbacks, an error in a half, and whole owned models --
FastLSTM, peephole LSTM, GRU, odd batches, float64 and float32 -- against gemm_in_slab=False
and the NumPy equations (float64, 1e-12), with the packed path counted. (hwin: a projection
narrower than its loop's batch rows -- GRU's -- lies in the slab as a strided window
(regions._candidates), which the packed kernel cannot write: the rewrite left out.)"""

import threading

import numpy as np
import pytest
from test_batch_split import CELLS, D, T, check_equations, train

import tapernn as tn
from tapernn import nn, own_room, own_threads
from tapernn.backends import numba_available, packed

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")


def needs_kernel(test):
    """numba and the packed path (also on AVX2: conftest.packed_now)."""
    test = pytest.mark.usefixtures("packed_now")(test)
    return pytest.mark.skipif(not numba_available(), reason="numba not installed")(test)


SOURCE = """def program(a0, a1, a2, *, keep6, s7, d8, i9, s10, s12, np_matmul_bias, scan_run14):
    v5 = a1.transpose(s3)
    v6 = a0.reshape(s4)
    v11 = keep6(s7, d8)
    o8 = v11[i9].reshape(s10)
    v8 = np_matmul_bias(v6, v5, a2, s12, out=o8)
    v9 = v8.reshape(s12)
    del v8
    v11 = scan_run14(v9, out=v11)
    return (v11,)
"""


def test_rewrite_makes_the_gemm_into_a_fresh_slab_a_room_call_line_for_line():
    text, n = own_room.rewrite(SOURCE)
    assert n == 1
    lines, old = text.split("\n"), SOURCE.split("\n")
    assert len(lines) == len(old)
    assert lines[0].endswith(", scan_run14, np_matmul_room0):")
    assert lines[5] == "    v8 = np_matmul_room0(v6, v5, a2, s12, v11, out=o8)"
    assert [a for a, b in zip(lines, old) if a != b] == [lines[0], lines[5]]
    # a plain GEMM (the LSTM's and GRU's projections), a view without reshape, np_empty
    plain = (
        SOURCE.replace("np_matmul_bias(v6, v5, a2, s12, out=o8)", "np_matmul(v6, v5, out=o8)")
        .replace("v11[i9].reshape(s10)", "v11[i9]")
        .replace("keep6(s7, d8)", "np_empty(s7, d8)")
    )
    text, n = own_room.rewrite(plain)
    assert n == 1 and "    v8 = np_matmul_room0(v6, v5, None, None, v11, out=o8)" in text


@pytest.mark.parametrize(
    "change",
    [
        ("    o8 = v11[i9]", "    v3 = v11.fill(0)\n    o8 = v11[i9]"),  # the slab written first
        ("    v8 = np_matmul_bias", "    v2 = o8.sum()\n    v8 = np_matmul_bias"),  # O read
        ("    v8 = np_matmul_bias", "    v2 = v11[i7]\n    v8 = np_matmul_bias"),  # slab seen
        ("keep6(s7, d8)", "_dest[0]"),  # the caller's array: its bytes may be meant
        ("np_matmul_bias(v6, v5", "np_matmul_bias(v11, v5"),  # reads the slab
        ("a2, s12, out=o8)", "o8, s12, out=o8)"),  # adds O
        ("out=o8)", "out=o9)"),  # another output
        ("np_matmul_bias(v6, v5, a2, s12, out=o8)", "np_multiply(v6, v5, out=o8)"),  # no GEMM
    ],
)
def test_rewrite_leaves_other_lines(change):
    src = SOURCE.replace(*change)
    text, n = own_room.rewrite(src)
    assert n == 0 and text == src


def test_panels_go_before_or_after_the_output_in_the_slab():
    room = np.zeros(1000, np.float32)
    assert own_room.panels_in(room, room[300:500], 300).base is room
    got = own_room.panels_in(room, room[300:500], 300)
    assert np.shares_memory(got, room[:300]) and got.size == 300
    got = own_room.panels_in(room, room[100:301], 300)  # after it, from a 64-byte boundary
    start = (got.__array_interface__["data"][0] - room.__array_interface__["data"][0]) // 4
    assert start >= 301 and (got.__array_interface__["data"][0] % 64) == 0
    assert got.size == 300 and not np.shares_memory(got, room[100:301])
    assert own_room.panels_in(room, room[100:800], 300) is None  # no room either side
    assert own_room.panels_in(room, np.zeros(10, np.float32), 5) is None  # not in the slab


def run_owned(fn):
    return own_threads.run(lambda _: fn(), None)


@pytest.fixture
def kernel_now(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    monkeypatch.setattr(own_threads, "MIN_FLOPS", 0.0)
    monkeypatch.setattr(own_room, "MIN_ROWS", 8)
    monkeypatch.setattr(own_room, "MIN_DEPTH", 1)
    monkeypatch.setattr(own_room, "DTYPES", {np.dtype(np.float32), np.dtype(np.float64)})


@needs_kernel
@pytest.mark.usefixtures("kernel_now")
@pytest.mark.parametrize("m, k, n", [(67, 5, 130), (64, 40, 64 * 3), (9, 3, 70)])
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_room_gemm_is_the_product_and_leaves_the_rest_of_the_slab(
    m, k, n, transposed, bias, dtype, rng
):
    a = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    b = w.T if transposed else np.ascontiguousarray(w.T)
    c = rng.standard_normal(n).astype(dtype) if bias else None
    want = a.astype(np.float64) @ b.astype(np.float64) + (0 if c is None else c)
    nr = packed.panel_width(dtype)
    panels = -(-n // nr) * k * nr
    slab = np.full(64 + m * n + panels + 64, 7.0, dtype)
    out = slab[64 : 64 + m * n].reshape(m, n)
    site = own_room.RoomGemm()
    before = own_room.RAN[0]
    got = run_owned(lambda: site(a, b, c, (m, n), slab, out=out))
    assert got is out and own_room.RAN[0] == before + 1
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())
    assert (slab[:64] == 7.0).all()  # (before the output: too small, the panels went after)
    # the same bits as the packed kernel over the whole product (its halves are its rows)
    p = packed.pack_panels(np.ascontiguousarray(b))
    whole = np.empty((m, n), dtype)
    packed.handle().kernel(a, p, whole)
    if c is not None:
        np.add(whole, c, out=whole)
    np.testing.assert_array_equal(out, whole)
    # outside an owned call: the line's own function (OpenBLAS)
    out[...] = 0
    site(a, b, c, (m, n), slab, out=out)
    assert own_room.RAN[0] == before + 1
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())


@needs_kernel
@pytest.mark.usefixtures("kernel_now")
def test_no_room_or_an_overlap_runs_openblas(rng):
    a = rng.standard_normal((40, 6))
    b = rng.standard_normal((6, 100))
    site = own_room.RoomGemm()
    before = own_room.RAN[0]
    slab = np.zeros(40 * 100 + 10)  # no room for the panels
    out = slab[:4000].reshape(40, 100)
    run_owned(lambda: site(a, b, None, None, slab, out=out))
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)
    big = np.zeros(40 * 100 + 8000)
    a_in = big[4100:4340].reshape(40, 6)  # a where the panels would go (after out)
    a_in[...] = a
    out = big[:4000].reshape(40, 100)
    run_owned(lambda: site(a_in, b, None, None, big, out=out))
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)
    assert own_room.RAN[0] == before


@pytest.mark.parametrize(
    "vendor, family, pays",
    [("AuthenticAMD", 25, True), ("AuthenticAMD", 26, False), ("GenuineIntel", 6, False)],
)
def test_the_packed_projection_runs_on_the_cpus_it_pays_on(
    vendor, family, pays, tmp_path, monkeypatch
):
    """Zen 4 (AMD family 25) only: an Intel Xeon's OpenBLAS halves are faster ("hrestI"), Zen 5
    (family 26) is not measured; the first CPU's block of /proc/cpuinfo is what is read."""
    info = tmp_path / "cpuinfo"
    block = "processor\t: {}\nvendor_id\t: {}\ncpu family\t: {}\nflags\t: fpu\n\n"
    info.write_text(block.format(0, vendor, family) + block.format(1, "Other", 99))
    assert own_room.vendor(str(info)) == (vendor, family)
    assert own_room.vendor(str(tmp_path / "missing")) == ("", 0)
    info.write_text("processor\t: 0\nflags\t: fpu\n")
    assert own_room.vendor(str(info)) == ("", 0)
    monkeypatch.setattr(own_room, "PAYS", [None])
    monkeypatch.setattr(own_room, "vendor", lambda: (vendor, family))
    assert own_room.pays() is pays and own_room.PAYS[0] is pays


@needs_kernel
@pytest.mark.usefixtures("kernel_now")
@pytest.mark.parametrize("pays", [True, False])
def test_a_cpu_it_does_not_pay_on_runs_openblas(pays, rng, monkeypatch):
    monkeypatch.setattr(own_room, "PAYS", [pays])
    a = rng.standard_normal((40, 6))
    b = rng.standard_normal((6, 100))
    site = own_room.RoomGemm()
    before = own_room.RAN[0]
    slab = np.zeros(40 * 100 + 8000)
    out = slab[:4000].reshape(40, 100)
    for _ in range(2):  # (the site's first two calls: the kernel taken at the first)
        run_owned(lambda: site(a, b, None, None, slab, out=out))
        np.testing.assert_allclose(out, a @ b, rtol=1e-12)
    assert own_room.RAN[0] == before + 2 * pays


@needs_kernel
@pytest.mark.usefixtures("kernel_now")
def test_an_error_in_the_workers_half_reaches_the_caller(rng, monkeypatch):
    a = rng.standard_normal((40, 6))
    b = rng.standard_normal((6, 200))
    slab = np.zeros(40 * 200 + 20000)
    out = slab[: 40 * 200].reshape(40, 200)
    real = packed.pack_panels

    def pack(w, out=None, nr=None):
        if threading.get_ident() in own_threads.worker_ident:
            raise MemoryError("worker half")
        return real(w, out, nr)

    monkeypatch.setattr(packed, "pack_panels", pack)
    site = own_room.RoomGemm()
    with pytest.raises(MemoryError, match="worker half"):
        run_owned(lambda: site(a, b, None, None, slab, out=out))
    monkeypatch.setattr(packed, "pack_panels", real)  # (and the worker is free again)
    run_owned(lambda: site(a, b, None, None, slab, out=out))
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)


def model(make, on, own="on", dtype="float64"):
    tn.manual_seed(0)
    m = nn.Sequencer(make()).astype(dtype)
    m.set_plan_options(
        tn.PlanOptions(layout="batch", batch_split="on", own_threads=own, gemm_in_slab=on)
    )
    return m


@needs_kernel
@pytest.mark.usefixtures("kernel_now")
@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("poison", [False, True])
def test_owned_models_against_openblas_and_the_equations(name, dtype, poison, rng, monkeypatch):
    # (poison: every byte of the slab but the GEMM's output NaN before the panels go in -- what
    # own_room relies on: the program reads none of them before writing it)
    monkeypatch.setattr(own_room, "POISON", [poison])
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        make, step, n, H = CELLS[name]
        batch = 7  # (odd: halves 4 | 3; 35 rows: the caller's half 20, the worker's 15)
        x = rng.standard_normal((T, batch, D)).astype(dtype)
        g = rng.standard_normal((T, batch, H)).astype(dtype)
        a, b = model(make, True, dtype=dtype), model(make, False, dtype=dtype)
        tol = 1e-12 if dtype == "float64" else 2e-5
        for _ in range(3):
            ran = own_room.RAN[0]
            got, want = train(a, x, g), train(b, x, g)
            # (the projection, every call; the GRU's 3H one is a strided window: hwin, see above)
            assert own_room.RAN[0] == ran + (name != "gru")
            for u, v in zip(got[:2], want[:2]):
                np.testing.assert_allclose(u, v, rtol=tol, atol=tol)
            for k in got[2]:
                np.testing.assert_allclose(got[2][k], want[2][k], rtol=tol, atol=tol, err_msg=k)
            for m in (a, b):  # the next call sees other weights
                for p in m.parameters():
                    p.data[...] += 0.01
        fwd = a._runtime.last.training_pair.forward.program
        assert ("np_matmul_room0(" in fwd.source) == (name != "gru")
        assert "np_matmul_room" not in b._runtime.last.training_pair.forward.program.source
        if dtype == "float64":
            for p in a.parameters():
                p.data[...] -= 0.03
            got = train(a, x, g)
            check_equations(a, step, n, x, g, got, rng)
    finally:
        tn.set_backend(before)


@needs_numba
@pytest.mark.usefixtures("kernel_now")
def test_not_owned_programs_are_not_rewritten(rng):
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        make, *_ = CELLS["fastlstm"]
        m = model(make, True, own="off")
        x, g = rng.standard_normal((T, 6, D)), rng.standard_normal((T, 6, 130))
        train(m, x, g)
        assert "np_matmul_room" not in m._runtime.last.training_pair.forward.program.source
    finally:
        tn.set_backend(before)


@needs_kernel
@pytest.mark.usefixtures("kernel_now")
def test_two_user_threads_share_the_worker(rng):
    # (each caller's half waits for its own half on the one worker, which runs them in turn)
    a = rng.standard_normal((70, 9)).astype(np.float32)
    b = rng.standard_normal((9, 150)).astype(np.float32)
    want = a.astype(np.float64) @ b
    before = own_room.RAN[0]
    errors = []

    def user():
        site = own_room.RoomGemm()
        slab = np.zeros(70 * 150 + 3 * 9 * 64 + 64, np.float32)
        out = slab[: 70 * 150].reshape(70, 150)
        try:
            for _ in range(20):
                out[...] = np.nan
                run_owned(lambda: site(a, b, None, None, slab, out=out))
                np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=user) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and not errors
    assert own_room.RAN[0] == before + 40


@needs_kernel
@pytest.mark.usefixtures("kernel_now")
@pytest.mark.parametrize("name", ["gru", "lstm", "fastlstm"])
def test_lengths_remembered_across_chunks_with_the_panels_in_the_slab(name, rng, monkeypatch):
    # (test_own_threads' chunks of `lengths=` batches, states remembered between calls, against
    # the unowned model and the equations -- here with the projections packed: the panels in
    # the slab must not reach a later call's state)
    import test_own_threads

    monkeypatch.setattr(own_room, "POISON", [True])  # (the rest of the slab NaN, as above)
    # (hmask: a masked loop that may split keeps its projection out of its slab -- no place in
    # its rows keeps the batch halves apart, slab_halves.py -- so own_room has no GEMM into a
    # slab there; the planner's rule off, the projection lies in the slab as before)
    from tapernn import regions

    monkeypatch.setattr(regions, "split_rows", lambda s, options: None)
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        ran = own_room.RAN[0]
        test_own_threads.test_lengths_remembered_across_chunks(name, rng)
        assert own_room.RAN[0] > ran
    finally:
        tn.set_backend(before)
        tn.set_blas_threads("auto")
