"""The column split of a loop's packed step GEMMs (scan_columns.py, issue 19): in owned calls a
loop whose packed weights hold >= scan_columns.MIN_BYTES runs whole, each step GEMM's panels
(output columns) split over the caller and the worker. Split = unsplit bit for bit (each panel
the same code) = the NumPy equations (float64, 1e-12), values and every gradient; odd batches
and panel counts; the rule in the compile report (on at the threshold, off one byte above it,
off for feature-major and unpacked loops); float32 bit for bit."""

import threading

import numpy as np
import pytest
from cell_reference import fastlstm_step
from test_batch_split import D, T, check_equations, notes, train

import tapernn as tn
from tapernn import nn, own_threads, scan_columns, scan_split
from tapernn.backends import numba_available
from tapernn.blas_bits import blas_bits

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
]
H = 130  # W (130, 520) float64: 540,800 bytes, packed (>= 65,536 elements); 17 | 5 panels


@pytest.fixture(autouse=True)
def numba_now(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")  # kernels from call 1
    monkeypatch.setattr(scan_columns, "MIN_BYTES", 0)  # every packed loop splits by columns
    monkeypatch.setattr(scan_columns, "_l3", [0])  # (MIN_BYTES alone, whatever this CPU's L3)
    monkeypatch.setattr(scan_columns, "PACK_MIN_BYTES", 0)  # every weight packed in two halves
    before = tn.get_backend()
    tn.set_backend("numba")
    yield
    tn.set_backend(before)
    tn.set_blas_threads("auto")


def model(own="on", split="auto", layout="batch", hidden=H, dtype=None):
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(D, hidden))
    if dtype is not None:
        m = m.astype(dtype)
    m.set_plan_options(tn.PlanOptions(layout=layout, batch_split=split, own_threads=own))
    return m


def exact(a, b):
    for u, v in zip(a[:2], b[:2]):
        if u is None:
            assert v is None
            continue
        np.testing.assert_array_equal(u, v)
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        np.testing.assert_array_equal(a[2][k], b[2][k], err_msg=k)


@pytest.mark.parametrize("batch", [5, 16])
def test_column_split_equals_unsplit_and_numpy_equations(batch, rng):
    x, g = rng.standard_normal((T, batch, D)), rng.standard_normal((T, batch, H))
    a, b = model("on", "on"), model("off", "off")
    for _ in range(2):  # other weights at each call
        exact(train(a, x, g), train(b, x, g))
        for m in (a, b):
            for p in m.parameters():
                p.data[...] += 0.01
    gemms, halves = scan_columns.SPLIT_GEMMS[0], scan_split.SPLIT_CALLS[0]
    got = train(a, x, g)
    # every step's GEMM of both loops split by columns (forward h @ W, backward dz @ W^T);
    # no batch halves
    assert scan_columns.SPLIT_GEMMS[0] - gemms >= 2 * T - 1
    assert scan_split.SPLIT_CALLS[0] == halves
    exact(got, train(b, x, g))
    assert all("split by output columns over 2 threads" in k for k in notes(a)), notes(a)
    assert all("columns" not in k for k in notes(b)), notes(b)
    check_equations(a, fastlstm_step, 2, x, g, got, rng)


def test_float32_bit_for_bit(rng, monkeypatch):
    """The owned call's time-batched GEMMs run on OpenBLAS in halves at one thread, the
    unowned one's whole at the thread count "auto" times: the same bits where the BLAS keeps
    them for row and column halves and for 1 vs 2 threads (tapernn.blas_bits; the AVX2 VM's
    float32 not), else here those GEMMs run whole at one thread in both programs, so the
    column split of the packed step GEMMs is still compared bit for bit."""
    bits = blas_bits(np.float32)
    if not (bits.rows and bits.columns and bits.threads):
        monkeypatch.setattr(own_threads, "MIN_FLOPS", float("inf"))
        tn.set_blas_threads(1)  # (own_threads="on" owns the calls at any policy)
    x = rng.standard_normal((T, 7, D)).astype(np.float32)
    g = rng.standard_normal((T, 7, 200)).astype(np.float32)  # (200, 800): 12.5 | 3.1 panels
    a = model("on", "on", hidden=200, dtype=np.float32)
    b = model("off", "off", hidden=200, dtype=np.float32)
    before = scan_columns.SPLIT_GEMMS[0]
    for _ in range(3):
        exact(train(a, x, g), train(b, x, g))
    assert scan_columns.SPLIT_GEMMS[0] > before


def test_need_grad_input_false(rng):
    x, g = rng.standard_normal((T, 9, D)), rng.standard_normal((T, 9, H))
    a, b = model("on", "on"), model("off", "off")
    before = scan_columns.SPLIT_GEMMS[0]
    for _ in range(2):
        got = train(a, x, g, False)
        assert got[1] is None
        exact(got, train(b, x, g, False))
    assert scan_columns.SPLIT_GEMMS[0] > before


def test_the_rule_in_the_report_and_the_calls(rng, monkeypatch):
    """On at exactly the loop's weight bytes, off one byte above (the batch halves then); not
    for feature-major loops (not packed) or unowned calls; the auto rule's row minimum holds."""
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    nbytes = H * 4 * H * 8
    monkeypatch.setattr(scan_columns, "MIN_BYTES", nbytes)
    on = model("on", "auto")
    train(on, x, g)
    assert all(
        "columns over 2 threads (packed weights 0.5 MiB" in k and "loop runs whole" in k
        for k in notes(on)
    ), notes(on)
    # an L3 of L3_SHARE x the weight's bytes: still the columns; L3_SHARE bytes more: the halves
    for extra, split in ((0, "columns over 2 threads"), (1, "batch split over 2 threads")):
        l3 = scan_columns.L3_SHARE * (nbytes + extra)
        monkeypatch.setattr(scan_columns, "_l3", [l3])
        m = model("on", "auto")
        train(m, x, g)
        assert all(split in k for k in notes(m)), notes(m)
    monkeypatch.setattr(scan_columns, "_l3", [0])
    monkeypatch.setattr(scan_columns, "MIN_BYTES", nbytes + 1)
    off = model("on", "auto")
    train(off, x, g)
    assert all("columns" not in k and "batch split over 2 threads" in k for k in notes(off))
    before = scan_columns.SPLIT_GEMMS[0], scan_split.SPLIT_CALLS[0]
    train(off, x, g)
    assert scan_columns.SPLIT_GEMMS[0] == before[0] and scan_split.SPLIT_CALLS[0] > before[1]
    monkeypatch.setattr(scan_columns, "MIN_BYTES", 0)
    feature = model("on", "auto", layout="feature")
    train(feature, x, g)
    assert all("columns" not in k for k in notes(feature)), notes(feature)
    unowned = model("off", "auto")
    train(unowned, x, g)
    before = scan_columns.SPLIT_GEMMS[0]
    train(unowned, x, g)  # (the rule holds, but the call is not owned: nothing splits)
    assert scan_columns.SPLIT_GEMMS[0] == before
    small = rng.standard_normal((T, 5, D)), rng.standard_normal((T, 5, H))
    few = model("on", "auto")  # 5 rows: "auto" does not split the loop at all
    train(few, *small)
    assert all("no batch split: 5 rows" in k for k in notes(few)), notes(few)
    assert "not owned" in few.compile_report().threads


def test_an_exception_in_the_workers_half_reaches_the_caller(rng, monkeypatch):
    """The worker's panels raising: the call raises, the BLAS pool setting is restored, and
    the model computes right afterwards."""
    x, g = rng.standard_normal((T, 6, D)), rng.standard_normal((T, 6, H))
    a, b = model("on", "on"), model("off", "off")
    exact(train(a, x, g), train(b, x, g))
    calls = [0]
    real_of = scan_columns._panels_of
    real = [None]

    def boom(a_, p, o, first, last):
        calls[0] += 1
        if first > 0:
            raise RuntimeError("boom in the worker's panels")
        return real[0](a_, p, o, first, last)

    def boom_of(kernel):
        real[0] = real_of(kernel)
        return boom

    monkeypatch.setattr(scan_columns, "_panels_of", boom_of)
    tn.set_blas_threads(2)
    with pytest.raises(Exception, match="boom"):
        train(a, x, g)
    assert calls[0] >= 2
    assert own_threads.blas.limiter.pool_count() == 2
    monkeypatch.setattr(scan_columns, "_panels_of", real_of)
    exact(train(a, x, g), train(b, x, g))


def test_a_large_weight_is_packed_on_two_threads(rng, monkeypatch):
    """In owned calls a weight of >= MIN_BYTES is packed in two halves of its panels (a copy:
    the same panels as packed.pack_panels), from a transposed view and a contiguous one, with
    a partial last panel; elsewhere (not owned) pack_panels alone."""
    from tapernn.backends import packed

    splits = [0]
    real = own_threads.submit

    def counting(*args):
        splits[0] += 1
        return real(*args)

    monkeypatch.setattr(scan_columns, "submit", counting)
    for w in (rng.standard_normal((70, 300)), rng.standard_normal((300, 70)).T):
        want, before = packed.pack_panels(w), splits[0]
        assert np.array_equal(scan_columns.pack(w, None, None), want) and splits[0] == before
        got = own_threads.run(lambda _, w=w: scan_columns.pack(w, None, None), None)
        np.testing.assert_array_equal(got, want)
        out = np.full_like(want, np.nan)
        own_threads.run(lambda _, w=w, out=out: scan_columns.pack(w, out, 32), None)
        np.testing.assert_array_equal(out, packed.pack_panels(w, None, 32))
    assert splits[0] == 4


def counted_packs(monkeypatch):
    """[the calls of packed.pack_panels from here on]."""
    calls = [0]
    real = scan_columns.packed.pack_panels

    def counting(w, out=None, nr=None):
        calls[0] += 1
        return real(w, out, nr)

    monkeypatch.setattr(scan_columns.packed, "pack_panels", counting)
    return calls


@pytest.mark.parametrize("pack_min", [0, 1 << 62])
def test_a_batch_split_loop_packs_on_two_threads_from_pack_min_bytes(pack_min, rng, monkeypatch):
    """Below the column split's MIN_BYTES (the loop splits its batch rows) a weight of >=
    PACK_MIN_BYTES is still packed in two halves in owned calls: the same steps bit for bit
    as with the pack on the caller alone (a copy), and as the unowned model."""
    monkeypatch.setattr(scan_columns, "MIN_BYTES", 1 << 62)
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    calls = counted_packs(monkeypatch)
    a, b = model("on", "on"), model("off", "off")
    monkeypatch.setattr(scan_columns, "PACK_MIN_BYTES", pack_min)
    for _ in range(2):
        before = calls[0]
        exact(train(a, x, g), train(b, x, g))
    # owned a: two loops (batch halves), each weight packed in two halves or whole; b: whole
    assert calls[0] - before == (2 * 2 if pack_min == 0 else 2) + 2
    assert notes(a) and not any("split by output columns" in n for n in notes(a))


def test_the_model_packs_through_the_split(rng, monkeypatch):
    x, g = rng.standard_normal((T, 6, D)), rng.standard_normal((T, 6, H))
    a, b = model("on", "on"), model("off", "off")
    calls = counted_packs(monkeypatch)
    exact(train(a, x, g), train(b, x, g))
    before = calls[0]
    exact(train(a, x, g), train(b, x, g))
    # owned a: two loops, two halves each; unowned b: one pack per loop
    assert calls[0] - before == 2 * 2 + 2


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_any_split_point_gives_the_same_bits_and_it_follows_the_slower_half(
    dtype, rng, monkeypatch
):
    """scan_columns.run's split point (the caller's panels [0, h)): every h the bits of the
    serial driver (each panel the same code); it moves by one panel toward the half
    that ends first -- more panels to the caller when the worker's half ends later, fewer
    when the caller's does -- and stays at npan // 2 with BALANCE off (the default)."""
    from tapernn.backends import packed

    monkeypatch.setattr(scan_columns, "BALANCE", [True])  # (off by default: not measured a gain)
    key = ((np.dtype(dtype).str,),)
    packed.handle().prepare(key)
    kernel = packed.handle().kernel
    a = rng.standard_normal((7, 50)).astype(dtype)
    panels = packed.pack_panels(rng.standard_normal((50, 903)).astype(dtype))
    npan = panels.shape[0]  # (15 to 113 panels: either geometry, either dtype)
    want = np.full((7, 903), np.nan, dtype)
    packed.run_kernel(kernel, a, panels, want)
    at = (a.shape, npan, a.dtype.char)

    def call():
        out = np.full_like(want, np.nan)
        own_threads.run(lambda _: scan_columns.run(kernel, a, panels, out), None)
        np.testing.assert_array_equal(out, want)

    for h in range(1, npan):
        monkeypatch.setitem(scan_columns._SPLIT, at, (h, 0.0))
        call()
    # a clock of the test's own (not the machine's: its load moves the wake-ups): each half
    # ends one unit per panel after the call's start, plus 100 on the slowed side
    real_of = scan_columns._panels_of
    slow = [None]
    ends: dict = {}

    def slowed(kernel):
        real = real_of(kernel)

        def panels_of(a_, p, o, first, last):
            real(a_, p, o, first, last)
            side = "worker" if first > 0 else "caller"
            penalty = 100.0 if side == slow[0] else 0.0
            ends[threading.get_ident()] = last - first + penalty

        return panels_of

    monkeypatch.setattr(scan_columns, "_panels_of", slowed)
    monkeypatch.setattr(scan_columns, "_now", lambda: ends.pop(threading.get_ident(), 0.0))
    monkeypatch.setitem(scan_columns._SPLIT, at, (npan // 2, 0.0))
    expect = npan // 2
    for who, step in (("worker", 1), ("caller", -1), ("caller", -1)):
        slow[0] = who
        for _ in range(3):
            call()
            expect += step
            assert scan_columns._SPLIT[at][0] == expect, who
    slow[0] = None  # (both alike: from 2 panels on the caller to the middle, and it stays)
    monkeypatch.setitem(scan_columns._SPLIT, at, (2, 0.0))
    for _ in range(8 * npan):
        call()
    assert abs(scan_columns._SPLIT[at][0] - npan / 2) <= 1.5
    monkeypatch.setattr(scan_columns, "BALANCE", [False])
    seen = []

    def recorded(kernel):
        real = real_of(kernel)
        return lambda a_, p, o, first, last: (
            seen.append((first, last)) or real(a_, p, o, first, last)
        )

    monkeypatch.setattr(scan_columns, "_panels_of", recorded)
    monkeypatch.setitem(scan_columns._SPLIT, at, (2, 0.0))  # (kept, and not read: off)
    call()
    assert sorted(seen) == [(0, npan // 2), (npan // 2, npan)]
    assert scan_columns._SPLIT[at] == (2, 0.0)


def test_the_column_split_starts_at_a_quarter_of_the_l3_if_more_than_min_bytes(
    tmp_path, monkeypatch
):
    """min_bytes: MIN_BYTES (12 MiB), or a quarter of the L3 if more -- a 32 MiB L3 (Zen 3 /
    Zen 4: columns at (64, 100, 1024)'s 16 MiB) keeps 12 MiB; a 480 MiB one (the Intel Xeon of
    BENCHMARKS.md "hloopI": the batch halves faster there) 120 MiB; no L3 found: 12 MiB."""
    monkeypatch.setattr(scan_columns, "MIN_BYTES", 12 << 20)
    for index, (level, size) in enumerate([("1", "48K"), ("2", "2048K"), ("3", "491520K")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "level").write_text(level + "\n")
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    monkeypatch.setattr(scan_columns, "_l3", [None])
    assert scan_columns.l3_bytes(str(tmp_path)) == 480 << 20
    assert scan_columns.min_bytes() == 120 << 20  # (read once: the same L3 from now on)
    for l3, least in [(32 << 20, 12 << 20), (480 << 20, 120 << 20), (0, 12 << 20)]:
        monkeypatch.setattr(scan_columns, "_l3", [l3])
        assert scan_columns.min_bytes() == least
    monkeypatch.setattr(scan_columns, "_l3", [None])
    assert scan_columns.l3_bytes(str(tmp_path / "none")) == 0  # (no sysfs: MIN_BYTES alone)
