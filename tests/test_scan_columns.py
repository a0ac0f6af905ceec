"""The column split of a loop's packed step GEMMs (scan_columns.py, issue 19): in owned calls a
loop whose packed weights hold >= scan_columns.MIN_BYTES (or a quarter of the L3) splits each step
GEMM's panels (output columns) over the caller and the worker, natively (both threads in one
step loop: backends/step_columns.py, whose bits and failures tests/test_native_columns.py
checks). Here: the rule in the compile report (on at the threshold, off one byte above it, off
for feature-major and unowned calls), need_grad_input=False, any split of the panels giving the
driver's bits, the weights packed in two halves, and the L3's share."""

import itertools

import numpy as np
import pytest
from test_batch_split import D, T, notes, train

import tapernn as tn
from tapernn import nn, own_threads, scan_columns, split_pack
from tapernn.backends import numba_available, step_columns

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
]
H = 256  # W (256, 1024) float64: 2 MiB, packed; B >= 16: the halves' step loops translate
COLUMNS = "split by output columns over the 2 threads"


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


def test_need_grad_input_false(rng):
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    a, b = model("on", "on"), model("off", "off")
    before = step_columns.CALLS[0]
    for _ in range(3):
        got = train(a, x, g, False)
        assert got[1] is None
        exact(got, train(b, x, g, False))
    assert step_columns.CALLS[0] > before


def test_the_rule_in_the_report_and_the_calls(rng, monkeypatch):
    """On at exactly the loop's weight bytes, off one byte above (the batch halves then); not
    for feature-major loops (not packed) or unowned calls; the auto rule's row minimum holds."""
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    nbytes = H * 4 * H * 8
    monkeypatch.setattr(scan_columns, "MIN_BYTES", nbytes)
    on = model("on", "auto")
    for _ in range(3):
        train(on, x, g)
    assert all(
        f"{COLUMNS} (packed weights 2.0 MiB" in k
        and "batch split over 2 threads (rows 0:8 | 8:16)" in k
        and "native columns" in k
        for k in notes(on)
    ), notes(on)
    before = step_columns.CALLS[0]
    train(on, x, g)
    assert step_columns.CALLS[0] - before == 2
    # an L3 of L3_SHARE x the weight's bytes: still the columns; L3_SHARE bytes more: the halves
    for extra in (0, 1):
        l3 = scan_columns.L3_SHARE * (nbytes + extra)
        monkeypatch.setattr(scan_columns, "_l3", [l3])
        m = model("on", "auto")
        train(m, x, g)
        assert all((COLUMNS in k) == (extra == 0) for k in notes(m)), notes(m)
    monkeypatch.setattr(scan_columns, "_l3", [0])
    monkeypatch.setattr(scan_columns, "MIN_BYTES", nbytes + 1)
    off = model("on", "auto")
    for _ in range(3):
        train(off, x, g)
    assert all("columns" not in k and "batch split over 2 threads" in k for k in notes(off))
    before = step_columns.CALLS[0]
    train(off, x, g)
    assert step_columns.CALLS[0] == before
    monkeypatch.setattr(scan_columns, "MIN_BYTES", 0)
    feature = model("on", "auto", layout="feature")
    train(feature, x, g)
    assert all("columns" not in k for k in notes(feature)), notes(feature)
    unowned = model("off", "auto")
    for _ in range(3):  # (the rule holds, but no call is owned: nothing splits)
        train(unowned, x, g)
    assert step_columns.CALLS[0] == before
    small = rng.standard_normal((T, 5, D)), rng.standard_normal((T, 5, H))
    few = model("on", "auto")  # 5 rows: "auto" does not split the loop at all
    train(few, *small)
    assert all("no batch split: 5 rows" in k for k in notes(few)), notes(few)
    assert "not owned" in few.compile_report().threads


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
    monkeypatch.setattr(split_pack, "ENABLED", [False])  # (else both threads pack, split_pack)
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
def test_any_split_of_the_panels_gives_the_drivers_bits(dtype, rng):
    """packed_kernels._packed_tiles over any panel range of an `a` packed once (the native split's
    static halves at every split point, its claims of 3 panels) = the serial driver over all
    panels, bit for bit: each panel the same code whichever range runs it."""
    from tapernn.backends import packed

    mod = packed._kernel_module()
    a = rng.standard_normal((19, 50)).astype(dtype)
    panels = packed.pack_panels(rng.standard_normal((50, 903)).astype(dtype))
    npan = panels.shape[0]  # (15 to 113 panels: either geometry, either dtype)
    want = np.full((19, 903), np.nan, dtype)
    mod._panels(a, panels, want, 0, npan)
    packed_a = mod._pack_a(a)
    for cuts in [[0, h, npan] for h in range(npan + 1)] + [[*range(0, npan, 3), npan]]:
        out = np.full_like(want, np.nan)
        for first, last in itertools.pairwise(cuts):
            mod._packed_tiles(packed_a, a.shape[0], panels, out, first, last)
        np.testing.assert_array_equal(out, want)


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
