"""The packed GEMM per instruction set (backends/packed.py GEOMETRY, issue 19, BENCHMARKS.md
"havx2"): the CPU flags pick "avx512" (8 rows x 3 vectors of 512 bits, "hloopI"), "avx2"
(4 x 3 of 256) or none; each geometry's kernel equals np.matmul within the rounding bound k*u*(|A|@|B|) on odd
shapes in both dtypes -- and both give the same bits (each output element one FMA chain over k
in order, whatever the vector width) --; a program's packed calls run the kernel its panels were
packed for (their width) even when the flags change later; whole training steps with the batch
split, owned threads and step loops equal the NumPy equations (float64, 1e-12) on either."""

import numpy as np
import pytest
from cell_reference import fastlstm_step
from test_batch_split import D, T, check_equations, notes, train
from test_packed_gemm import within_rounding

import tapernn as tn
from tapernn import nn, scan_split
from tapernn.backends import numba_available, packed, step_loop
from tapernn.errors import TapernnError

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")
SHAPES = [(1, 1, 1), (3, 7, 5), (4, 64, 64), (5, 300, 70), (9, 129, 23), (33, 250, 1000)]
KINDS = sorted(packed.GEOMETRY)


@pytest.fixture
def flags():
    """packed's CPU flags, restored after the test (which may set them)."""
    packed.isa()
    before = packed._avx512[0], packed._avx2[0]
    yield
    packed._avx512[0], packed._avx2[0] = before


def force(kind):
    packed._avx512[0], packed._avx2[0] = kind == "avx512", kind == "avx2"


def test_detect_reads_the_cpu_flags(tmp_path):
    cases = {
        "fpu sse2 avx avx2 fma avx512f avx512bw": (True, True),
        "fpu sse2 avx avx2 fma": (False, True),
        "fpu sse2 avx avx2": (False, False),  # (no FMA: no kernel)
        "fpu sse2 avx fma avx512fx": (False, False),  # (a longer name is another flag)
    }
    for i, (line, want) in enumerate(cases.items()):
        path = tmp_path / f"cpuinfo{i}"
        path.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {line}\n\nflags\t: avx512f\n")
        assert packed._detect(str(path)) == want, line
    got = packed._detect(str(tmp_path / "missing"))  # (LLVM's host features)
    assert all(isinstance(v, bool) for v in got)


@pytest.mark.usefixtures("flags")
def test_isa_follows_the_flags():
    for a512, a2, want in [(True, True, "avx512"), (True, False, "avx512"), (False, True, "avx2")]:
        packed._avx512[0], packed._avx2[0] = a512, a2
        assert packed.isa() == want and packed.available()
        assert packed.panel_width(np.float32) == {"avx512": 64, "avx2": 16}[want]
    packed._avx512[0], packed._avx2[0] = False, False
    assert packed.isa() is None and not packed.available()
    assert packed.rule(tn.PlanOptions(backend="numba")) is None


def test_panel_widths_and_isa_of():
    widths = {(k, np.dtype(d).name): packed.panel_width(d, k) for k in KINDS for d in "fd"}
    assert widths == {
        ("avx2", "float32"): 16,
        ("avx2", "float64"): 8,
        ("avx512", "float32"): 64,
        ("avx512", "float64"): 32,
    }
    w = np.ones((7, 50), np.float32)
    for kind in KINDS:
        p = packed.pack_panels(w, nr=packed.panel_width(w.dtype, kind))
        assert packed.isa_of(p) == kind
    with pytest.raises(TapernnError, match="panels"):
        packed.isa_of(packed.pack_panels(w, nr=8))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_each_geometry_equals_matmul_and_both_the_same_bits(dtype, rng, monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    key = ((np.dtype(dtype).str,),)
    kernels = {}
    for kind in KINDS:
        h = packed.handle(kind)
        h.prepare(key)
        assert h.has(key), h.error
        kernels[kind] = h.kernel
        pk = packed.module_of(h.kernel)
        assert (pk.VEC_BITS, pk.NV) == packed.GEOMETRY[kind]
    assert packed.module_of(kernels["avx2"]) is not packed.module_of(kernels["avx512"])
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k)).astype(dtype)
        w = rng.standard_normal((k, n)).astype(dtype)
        outs = {}
        for kind, kernel in kernels.items():
            panels = packed.pack_panels(w, nr=packed.panel_width(dtype, kind))
            out = np.full((m, n), np.nan, dtype)
            assert packed.run_kernel(kernel, a, panels, out) is out
            within_rounding(out, a, w)
            outs[kind] = out
        np.testing.assert_array_equal(outs["avx2"], outs["avx512"])
    # strided operands: a transposed `a`, a column block of a wider `out`; other panels refused
    a = rng.standard_normal((40, 6)).astype(dtype).T
    w = rng.standard_normal((40, 70)).astype(dtype)
    for kind, kernel in kernels.items():
        big = np.zeros((6, 100), dtype)
        panels = packed.pack_panels(w, nr=packed.panel_width(dtype, kind))
        packed.run_kernel(kernel, a, panels, big[:, 10:80])
        within_rounding(big[:, 10:80], a, w)
        assert not big[:, :10].any() and not big[:, 80:].any()
        other = "avx2" if kind == "avx512" else "avx512"
        wrong = packed.pack_panels(w, nr=packed.panel_width(dtype, other))
        with pytest.raises(TapernnError, match="panels"):
            packed.run_kernel(kernel, a, wrong, big[:, 10:80])


@needs_numba
@pytest.mark.usefixtures("flags")
def test_a_site_runs_the_kernel_of_its_panels(rng, monkeypatch):
    """The flags say AVX-512, the panels were packed for AVX2 (a program compiled before the
    flags changed): the site takes AVX2's kernel, and the product is right."""
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    force("avx512")
    a, w = rng.standard_normal((6, 40)), rng.standard_normal((40, 50))
    site = packed.PackedSite()
    got = site(a, w, packed.pack_panels(w, nr=packed.panel_width(w.dtype, "avx2")))
    assert site.handle is packed.handle("avx2") and site.kernel is packed.handle("avx2").kernel
    within_rounding(got, a, w)


H = 130  # W (130, 520) float64: packed (>= 65,536 elements); 17 / 65 panels (AVX-512 / AVX2)


def model(split="on"):
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(D, H))
    m.set_plan_options(tn.PlanOptions(layout="batch", batch_split=split, own_threads="on"))
    return m


def steps_of(m, x, g, calls, kind):
    out = None
    for _ in range(calls):
        force(kind)
        out = train(m, x, g)
    return out


@needs_numba
@pytest.mark.usefixtures("flags")
def test_training_steps_on_each_geometry_equal_the_numpy_equations(rng, monkeypatch):
    """FastLSTM float64, B = 9 (halves 5 | 4: a partial row block each), split, owned, each
    half's loop one numba call: the NumPy equations at 1e-12 on either geometry, the same bits
    on both; a model compiled under AVX2 keeps its kernels when the flags say AVX-512 later."""
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        x, g = rng.standard_normal((T, 9, D)), rng.standard_normal((T, 9, H))
        got, made = {}, {}
        for kind in KINDS:
            force(kind)
            made[kind] = m = model()
            loops, split = step_loop.CALLS[0], scan_split.SPLIT_CALLS[0]
            got[kind] = steps_of(m, x, g, 3, kind)
            assert step_loop.CALLS[0] > loops and scan_split.SPLIT_CALLS[0] > split
            assert all("each half's loop one numba call" in k for k in notes(m)), notes(m)
            assert not m.compile_report().fallbacks, m.compile_report().fallbacks
            check_equations(m, fastlstm_step, 2, x, g, got[kind], rng)
        for u, v in zip(got["avx2"][:2], got["avx512"][:2]):
            np.testing.assert_array_equal(u, v)
        for k in got["avx2"][2]:
            np.testing.assert_array_equal(got["avx2"][2][k], got["avx512"][2][k], err_msg=k)
        again = steps_of(made["avx2"], x, g, 1, "avx512")  # (compiled under AVX2)
        assert not made["avx2"].compile_report().fallbacks
        for u, v in zip(again[:2], got["avx2"][:2]):
            np.testing.assert_array_equal(u, v)
        unsplit = steps_of(model("off"), x, g, 2, "avx2")
        for u, v in zip(unsplit[:2], got["avx2"][:2]):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    finally:
        tn.set_backend(before)


@needs_numba
def test_the_kernel_module_is_made_once_per_geometry_and_follows_a_changed_geometry(monkeypatch):
    """pack_panels asks for the module at every loop call: after the first, no file read (it
    cost ~0.17 ms a call, BENCHMARKS.md "h256c"); a geometry changed later gets the module of
    its own text, not the remembered one."""
    from pathlib import Path

    first = {kind: packed._kernel_module(kind) for kind in KINDS}
    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: reads.append(p) or real(p))
    assert all(packed._kernel_module(kind) is first[kind] for kind in KINDS)
    assert not reads
    monkeypatch.setitem(packed.GEOMETRY, "avx2", (256, 1))  # (a geometry never loaded before)
    other = packed._kernel_module("avx2")
    assert reads and (other.VEC_BITS, other.NV) == (256, 1) and other is not first["avx2"]
    assert packed._kernel_module("avx512") is first["avx512"]


def each_range_equal(panels_fn, a, panels, whole):
    """panels_fn(a, panels, out, first, last) for every panel range [first, last): its columns
    bit for bit `whole`'s, no other column of out written."""
    m, n = whole.shape
    npan, nr = panels.shape[0], panels.shape[2]
    for first in range(npan + 1):
        for last in range(first, npan + 1):
            out = np.full((m, n), np.nan, whole.dtype)
            panels_fn(a, panels, out, first, last)
            cols = slice(first * nr, min(last * nr, n))
            np.testing.assert_array_equal(out[:, cols], whole[:, cols])
            out[:, cols] = np.nan
            assert np.isnan(out).all(), (a.shape, n, first, last)  # (no other column written)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tiles_of_three_vectors_cross_panels_with_the_same_bits_in_any_panel_range(dtype, rng):
    """Both drivers compute 3 vectors a microkernel call, taken across the panels
    (`_vector_tiles`): AVX2's 4 rows x 3 across 2-vector panels (BENCHMARKS.md "h512"), AVX-512's
    8 x 3 across 4-vector panels, prefetching the next tile past 2 row blocks ("hloopI"), a
    range's last 2 or 4 vectors in tiles of 2 ("hf64": the loops' N = 256 GEMMs). Over
    the same panels, any range of panels [first, last) (the column split's halves) writes its
    own columns alone, bit for bit what the whole range writes, and the two geometries the same
    bits (each element one FMA chain over k in order): odd row counts (the zero-padded row
    block), 1, 2 and 3 row blocks, widths that end inside a panel or inside a tile, a last tile
    of 1 or 2 vectors, 16 and 32 vectors (H = 256's reverse loop: 5 and 10 tiles of 3, then 2 of
    2 and 1 of 2 on AVX-512)."""
    mods = {kind: packed._kernel_module(kind) for kind in KINDS}
    assert {kind: (pk.MR, pk.TV, pk.NV, pk.PREFETCH, pk.PAIRS) for kind, pk in mods.items()} == {
        "avx2": (4, 3, 2, False, False),
        "avx512": (8, 3, 4, True, True),
    }
    lanes = packed.panel_width(dtype, "avx2") // 2
    for m, k, n in [
        (1, 1, 1),
        (5, 7, lanes),
        (4, 33, 3 * lanes + 1),
        (9, 64, 10 * lanes - 3),
        (16, 20, 64),
        (17, 19, 13 * lanes + 2),
        (24, 5, 8 * lanes),
        (16, 40, 256),
        (17, 23, 8 * lanes),
    ]:
        a = rng.standard_normal((m, k)).astype(dtype)
        w = rng.standard_normal((k, n)).astype(dtype)
        wholes = []
        for pk in mods.values():
            panels = packed.pack_panels(w, nr=pk.NV * pk.lanes(dtype))
            whole = np.full((m, n), np.nan, dtype)
            pk.packed_matmul_serial(a, panels, whole)
            within_rounding(whole, a, w)
            each_range_equal(pk._panels, a, panels, whole)
            wholes.append(whole)
        np.testing.assert_array_equal(*wholes)
