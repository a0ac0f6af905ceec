"""Whole-loop and whole-program kernels compiled with LLVM's loop vectoriser taking loops of 4+
iterations (backends/numba_interleave.py's `small_trips`, issue 19, BENCHMARKS.md "hvec5"): the
option is set for the compile alone, under numba's compiler lock, and set back after (also when
the compile fails); every kernel text of a tutorial-size model names the count (its own cache
digest); it takes effect (the (1, 5, 5) FastLSTM forward loop's sigmoids in vector divisions,
none without it); and the kernels give the same bits as the same texts compiled without it
(LLVM's default, main's kernels before): forward, input and parameter gradients, float32 and
float64."""

import re

import numpy as np
import pytest
from conftest import optimised_subprocess

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_available, numba_interleave

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("numba_now"),  # (conftest: kernels compiled at first calls)
]
TRIP = "-vectorizer-min-trip-count"


def _spy(monkeypatch):
    from numba.core.compiler_lock import global_compiler_lock

    calls = []
    real = numba_interleave._option

    def spy(name, value):
        if name == TRIP:
            calls.append((value, global_compiler_lock.is_locked()))
        return real(name, value)

    monkeypatch.setattr(numba_interleave, "_option", spy)
    return calls


def test_set_for_the_block_alone_under_the_compiler_lock(monkeypatch):
    calls = _spy(monkeypatch)
    marked = numba_interleave.trip_mark() + "import numpy\n"
    with numba_interleave.small_trips(marked):
        assert calls == [(4, True)]
    assert calls == [(4, True), (16, True)]  # (LLVM's default again, still under the lock)
    with pytest.raises(ZeroDivisionError), numba_interleave.small_trips(marked):
        1 / 0  # noqa: B018 -- a failing compile
    assert calls[2:] == [(4, True), (16, True)]
    with numba_interleave.small_trips("import numpy\n"):  # (no mark: nothing set)
        pass
    assert len(calls) == 4


def test_the_mark_names_the_count(monkeypatch):
    mark = numba_interleave.trip_mark()
    assert mark == f"# (compiled with LLVM's {TRIP}=4: numba_interleave.py)\n"
    assert numba_interleave.trip_in(mark + "x = 1\n") == 4
    assert numba_interleave.trip_in("x = 1\n" + mark) == 0  # (the first line only)
    assert numba_interleave.count_in(mark) == 0  # (not a step loop's interleave mark)
    for off in (0, numba_interleave.LLVM_TRIP):  # (LLVM's default: no mark, the old text)
        monkeypatch.setattr(numba_interleave, "TRIP", [off])
        assert numba_interleave.trip_mark() == ""


def _train(cell, shape, dtype, rng):
    """(model, [forward output, input gradient, parameter gradients...]) after 3 steps of a
    fresh numba Sequencer(cell(H, H)) on inputs of `shape` (T, B, H), scaled so that gates
    saturate (the clamped branches of vm_tanh / vm_sigmoid run too)."""
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    tn.manual_seed(0)
    m = nn.Sequencer(getattr(nn, cell)(shape[2], shape[2])).astype(dtype)
    for _ in range(3):
        m.zero_grad_parameters()
        y = np.array(m.forward(x))
        gx = np.array(m.backward(x, g))
    return m, [y, gx, *(p.grad.copy() for p in m.named_parameters().values())]


def _programs(m):
    pair = m._runtime.last.training_pair
    return [c.program_kernel.handle.shared for c in (pair.forward, pair.backward)]


@pytest.mark.parametrize(
    "cell, shape, dtype",
    [
        ("FastLSTM", (5, 1, 5), "float32"),
        ("FastLSTM", (5, 1, 5), "float64"),
        ("GRU", (3, 2, 7), "float32"),
        ("LSTM", (4, 1, 6), "float64"),
    ],
)
def test_the_same_bits_as_without_the_option(cell, shape, dtype, monkeypatch):
    calls = _spy(monkeypatch)
    mine, got = _train(cell, shape, dtype, np.random.default_rng(7))
    # (each whole-program kernel compiled here compiled inside the option, LLVM's default
    # after; a text this process compiled before -- another test's same model -- compiles
    # nothing: its mark, checked below, is what set the option then)
    assert all(locked for _, locked in calls) and calls[-1:] in ([], [(16, True)])
    assert [v for v, _ in calls] == [4, 16] * (len(calls) // 2)
    for program in _programs(mine):
        assert program.kernel is not None, program.error
        for text in [program.source] + [loop.source for loop in program.loops]:
            assert text.startswith(numba_interleave.trip_mark())
    monkeypatch.setattr(numba_interleave, "TRIP", [0])  # (the old texts, LLVM's default)
    old, want = _train(cell, shape, dtype, np.random.default_rng(7))
    for program in _programs(old):
        assert program.kernel is not None and numba_interleave.trip_in(program.source) == 0
    assert len(got) == len(want)
    for u, v in zip(got, want):
        assert u.dtype == dtype and np.array_equal(u, v)


def _divisions(loop, marked: bool) -> list[str]:
    """The packed divisions in the machine code of loop kernel `loop`'s text (a fresh
    dispatcher: numba's cached code has no assembly to inspect), compiled with its mark or
    without."""
    from numba import njit

    fresh = njit(error_model="numpy", nogil=True)(loop.kernel.py_func)
    (key,) = loop.types
    with numba_interleave.small_trips(loop.source if marked else "\n"):
        fresh.compile(loop.signature(key))
    return re.findall(r"\bvdivp[sd]\b", fresh.inspect_asm(fresh.signatures[0]))


def test_the_tutorial_forward_gates_are_vectorised(request, rng, monkeypatch):
    """The (1, 5, 5) FastLSTM forward loop (gate loops of 10 and 5 elements): vector sigmoids
    with the mark, scalar ones without (LLVM's default: no loop under 16 vectorised). Every
    count written in (test_gate_counts: a hidden one is vectorised whatever the mark)."""
    if optimised_subprocess(request):  # (machine code at -O3 only)
        return
    from tapernn.backends import loop_values, numba_program

    monkeypatch.setattr(numba_program, "ENABLED", [False])  # (the loop kernel compiled alone)
    monkeypatch.setattr(loop_values, "SHORT", [0])
    m, _ = _train("FastLSTM", (5, 1, 5), "float32", rng)
    bodies = m._runtime.last.training_pair.forward.program.bodies.values()
    (loop,) = [found[2].handle.shared for found in bodies]
    assert loop.source.startswith(numba_interleave.trip_mark())
    assert _divisions(loop, marked=True)
    assert not _divisions(loop, marked=False)
