"""Step loops compiled with LLVM's loop vectoriser interleaving two vectors
(backends/numba_interleave.py, issue 19, BENCHMARKS.md "h256L"): the option is set for the step
loop's compile alone, under numba's compiler lock, and set back after (also when the compile
fails); it takes effect (a vecmath sigmoid loop's machine code holds more vector divisions
interleaved than at one vector); a translated FastLSTM / GRU half compiled interleaved gives the
same bits as the same text compiled at one vector (float32 and float64); LLVM's cost model is
back after the block; the kernel text names
the count (its own cache digest). Where the CPU has AVX-512 the loops are compiled 512 bits wide
(`-force-vector-width`, set and reset the same way): the same bits as the cost model's width."""

import copy
import re

import numpy as np
import pytest
from test_batch_split import D, train
from test_step_loop import CELLS, model, translated

from tapernn.backends import numba_available, numba_interleave, packed, step_loop

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
    pytest.mark.usefixtures("numba_now"),  # (conftest: kernels compiled at first calls)
]


def _spy(monkeypatch):
    from numba.core.compiler_lock import global_compiler_lock

    calls = []
    real = numba_interleave._set

    def spy(value):
        calls.append((value, global_compiler_lock.is_locked()))
        return real(value)

    monkeypatch.setattr(numba_interleave, "_set", spy)
    return calls


def test_set_for_the_block_alone_under_the_compiler_lock(monkeypatch):
    calls = _spy(monkeypatch)
    with numba_interleave.interleaved(3):
        assert calls == [(3, True)]
    assert calls == [(3, True), (0, True)]  # (LLVM's default again, still under the lock)
    with pytest.raises(ZeroDivisionError), numba_interleave.interleaved(2):
        1 / 0  # noqa: B018 -- a failing compile
    assert calls[2:] == [(2, True), (0, True)]
    with numba_interleave.interleaved(1):  # (one vector: the cost model's choice, nothing set)
        pass
    assert len(calls) == 4
    widths = []
    real = numba_interleave._set_width
    monkeypatch.setattr(numba_interleave, "_set_width", lambda v: widths.append(v) or real(v))
    with numba_interleave.interleaved(2, 16):
        assert calls[4:] == [(2, True)] and widths == [16]
    assert calls[4:] == [(2, True), (0, True)] and widths == [16, 0]
    with pytest.raises(ZeroDivisionError), numba_interleave.interleaved(1, 8):
        1 / 0  # noqa: B018
    assert len(calls) == 6 and widths == [16, 0, 8, 0]  # (the width alone: no count set)


def test_the_mark_names_the_vector_bits_and_the_lanes_follow_the_dtype():
    from numba import typeof

    f32, f64 = typeof(np.zeros((2, 2), np.float32)), typeof(np.zeros(2))
    wide = numba_interleave.mark(2, 512) + "\nimport sys\n"
    assert numba_interleave.count_in(wide) == 2
    assert numba_interleave.lanes_in(wide, (typeof(3), f32)) == 16
    assert numba_interleave.lanes_in(wide, (f32, f64)) == 8  # (the widest float)
    assert numba_interleave.lanes_in(wide, (typeof(3), typeof(np.zeros(2, np.int64)))) == 0
    plain = numba_interleave.mark(2, 0)  # (no bits named: the old text, the cost model's)
    assert plain == "# (compiled with LLVM's -force-vector-interleave=2: numba_interleave.py)"
    assert numba_interleave.lanes_in(plain, (f32,)) == 0 and numba_interleave.count_in(plain) == 2
    assert numba_interleave.mark() == numba_interleave.mark(
        numba_interleave.COUNT[0], numba_interleave.bits()
    )


def _sigmoid_loop():
    """A fresh dispatcher of a vecmath float32 sigmoid loop (numba compiles each anew)."""
    from numba import njit

    from tapernn.backends import vecmath
    from tapernn.backends.kernel_cache import import_written
    from tapernn.backends.numba_backend import cache_dir
    from tapernn.backends.numba_setup import setup

    setup()
    helpers = import_written(cache_dir(), vecmath.HELPERS_MODULE, vecmath.HELPERS_SOURCE.encode())
    sig = helpers.vm_sigmoid

    def loop(a, o):
        for i in range(a.shape[0]):
            o[i] = sig(a[i])

    return njit(error_model="numpy", nogil=True)(loop)


def _divisions(count: int, lanes: int = 0) -> tuple[str, np.ndarray]:
    f = _sigmoid_loop()
    a = np.linspace(-30, 30, 1001, dtype=np.float32)
    o = np.empty_like(a)
    with numba_interleave.interleaved(count, lanes):
        if count == 1:
            numba_interleave._set(1)  # (forced one vector, as the other forced count)
        try:
            f.compile("(float32[::1], float32[::1])")
        finally:
            numba_interleave._set(0)
    f(a, o)
    return f.inspect_asm(f.signatures[0]), o


def test_the_option_takes_effect_and_keeps_the_bits():
    (one, o1), (two, o2) = _divisions(1), _divisions(numba_interleave.COUNT[0])
    assert one.count("vdivps") >= 1, "the sigmoid loop is not vectorised"
    assert two.count("vdivps") > one.count("vdivps")  # (an ignored option: the same code)
    assert np.array_equal(o1, o2)


def test_the_width_takes_effect_and_keeps_the_bits():
    (one, o1), (wide, o2) = _divisions(1), _divisions(1, 16)
    divisions = re.findall(r"\bvdivps\s+.*%([xyz])mm", wide)
    if packed._detect()[0]:  # (an AVX-512 CPU -- not packed_on's forced isa(): 16 float32
        # lanes in zmm where the default width is ymm)
        assert "z" in divisions and "z" not in re.findall(r"\bvdivps\s+.*%([xyz])mm", one)
    else:  # (AVX2: LLVM splits the 16 lanes in two ymm vectors)
        assert len(divisions) > one.count("vdivps")
    assert np.array_equal(o1, o2)


def _halves(name, dtype, rng):
    make, _, _, H = CELLS[name]
    batch = 16
    x = rng.standard_normal((4, batch, D)).astype(dtype)
    g = rng.standard_normal((4, batch, H)).astype(dtype)
    m = model(make, True, dtype)
    seen = []
    choose = step_loop.Halves.choose

    def spy(self, runner, *args):
        bound = choose(self, runner, *args)
        if bound is not None:
            seen.extend(bound)
        return bound

    for _ in range(3):
        train(m, x, g)
    assert translated(m) == 2
    real = step_loop.Halves.choose
    step_loop.Halves.choose = spy
    try:
        train(m, x, g)
    finally:
        step_loop.Halves.choose = real
    return seen


@pytest.mark.parametrize("name", ["fastlstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_interleaved_halves_equal_one_vector_bit_for_bit(name, dtype, rng, monkeypatch):
    from tapernn.backends.numba_backend import _load

    calls = _spy(monkeypatch)
    bound = _halves(name, dtype, rng)
    assert len(bound) == 4  # (two loops, two halves)
    for b in bound:
        assert b.loop.source.startswith(numba_interleave.mark() + "\n")
        assert numba_interleave.count_in(b.loop.source) == numba_interleave.COUNT[0] == 2
        # the same text but its first line, compiled at one vector, outside the option
        plain = _load(b.loop.source.replace(numba_interleave.mark(), numba_interleave.mark(1), 1))
        key = b.loop.key(b.args)
        numba_interleave._set(1)
        try:
            plain.compile(key)
        finally:
            numba_interleave._set(0)
        mine, theirs = copy.deepcopy(b.args), copy.deepcopy(b.args)
        got, want = b.loop(*mine), plain(*b.loop.args(theirs))
        for u, v in zip(list(got) + list(mine), list(want) + list(theirs)):
            if isinstance(u, np.ndarray):
                assert u.dtype == dtype and np.array_equal(u, v, equal_nan=True)
    # (each step loop compiled inside the option: set to COUNT, then LLVM's default)
    assert (numba_interleave.COUNT[0], True) in calls and calls[-1][0] in (0, 1)


def test_the_cost_model_is_back_after_the_block():
    """A small loop LLVM's cost model interleaves by itself (an add: several vectors) compiles
    the same before and after an interleaved block, and otherwise inside it: no compile after
    a step loop's is held at its count (a dropped reset leaves the process at two)."""
    from numba import njit

    def adds():
        def add(a, b, o):
            for i in range(a.shape[0]):
                o[i] = a[i] + b[i]

        f = njit(error_model="numpy")(add)
        f.compile("(float32[::1], float32[::1], float32[::1])")
        return f.inspect_asm(f.signatures[0]).count("vaddps")

    before = adds()
    with numba_interleave.interleaved(numba_interleave.COUNT[0]):
        inside = adds()
    assert adds() == before != inside
    with numba_interleave.interleaved(1, 64):  # (the width alone, then LLVM's again)
        inside = adds()
    assert adds() == before != inside
