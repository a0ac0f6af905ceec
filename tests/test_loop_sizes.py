"""Whole-loop numba kernels without sizes in their text (backends/size_lift.py, loop_source):
two loops of one structure at other sizes (B, H, T) run ONE compiled kernel -- one text, one
module, one numba signature -- each with its own `dims`, and each equals the NumPy equations
(1e-12, float64); the text reads every size but 0 and 1 from `dims`; a loop whose carries have
one row (B = 1) keeps its sizes literal (loop_source.LITERAL_ROWS), and by default every loop
does (lifted, small batches' steps were 20-30 % slower: BENCHMARKS.md "hlift"); lifted and literal texts
give the same bits on odd and strided inputs; a whole-program kernel passes each loop it calls
a slice of its own `dims`, and two batch sizes share the program kernel too."""

import re

import numpy as np
import pytest
from scan_bodies import rnn_scan as _rnn

import tapernn as tn
from tapernn.backends import loop_source, numba_loop, numba_program
from tapernn.backends.size_lift import sizes_written_in

pytest.importorskip("numba")


def _loop_handle(c):
    (found,) = c.program.bodies.values()
    return found[2].handle  # (numba_loop.LoopInstance)


def _kernel_body(source: str) -> str:
    """The kernel function's lines after its `n<k> = dims[k]` reads."""
    body = source[source.index("\ndef kernel(") :].split("\n")[2:]
    return "\n".join(line for line in body if not re.match(r"^    n\d+ = dims\[\d+\]$", line))


def _literal_loop(B, H, T, seed):
    """A (B, H, T) loop compiled and checked against the equations: its kernel has its sizes
    written in (H in a range) and no `dims`; its arrays and wanted values."""
    g, arrays, want = _rnn(B, H, T, seed)
    c = tn.compile(g, backend="numba")
    for a, b in zip(c(*arrays), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    handle = _loop_handle(c)
    assert len(handle.dims) == 0 and "dims[" not in handle.shared.source
    assert re.search(rf"range\({H}\)", handle.shared.source)  # (H written in)
    return arrays, want


@pytest.fixture
def fresh(monkeypatch):
    """Loop and program kernel handles made anew in this test (numba may load its cache), loops
    of B >= 2 lifted (LITERAL_ROWS [1]: off by default, see the last test)."""
    monkeypatch.setattr(numba_loop, "_loops", {})
    monkeypatch.setattr(numba_program, "_programs", {})
    monkeypatch.setattr(loop_source, "LITERAL_ROWS", [1])


def test_one_loop_kernel_serves_two_batches_widths_and_lengths(fresh, monkeypatch):
    monkeypatch.setattr(numba_program, "ENABLED", [False])  # (the loop kernels alone)
    handles = []
    for B, H, T, seed in [(2, 5, 4, 0), (3, 7, 6, 1)]:
        g, arrays, want = _rnn(B, H, T, seed)
        c = tn.compile(g, backend="numba")
        assert [r.kernel for r in c.report.loops] == ["numba loop kernel"]
        for _ in range(2):
            got = c(*arrays)
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        handles.append(_loop_handle(c))
    a, b = handles
    assert a is not b and a.shared is b.shared  # one text, one module, one kernel
    assert len(a.shared.kernel.signatures) == 1  # one compiled specialisation for both
    assert list(a.dims) != list(b.dims) and len(a.dims) == len(b.dims) > 0
    assert a.work != b.work  # (each its own workspace sizes)
    body = _kernel_body(a.shared.source)
    assert not re.findall(r"\b(?:[2-9]|\d{2,})\b", body), body  # no size but 0 and 1 in it
    assert "dims" in a.shared.source and "4" in a.concrete and "7" in b.concrete


def test_a_loop_with_one_row_keeps_its_sizes_literal(fresh, monkeypatch):
    monkeypatch.setattr(numba_program, "ENABLED", [False])
    arrays, want = _literal_loop(1, 5, 4, 2)
    monkeypatch.setattr(loop_source, "LITERAL_ROWS", [0])  # (the rule off: lifted)
    c = tn.compile(_rnn(1, 5, 4, 2)[0], backend="numba")
    for a, b in zip(c(*arrays), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert len(_loop_handle(c).dims) > 0 and "range(5)" not in _loop_handle(c).shared.source


@pytest.mark.parametrize("order", ["C", "F"])
def test_lifted_and_literal_texts_give_the_same_bits(fresh, monkeypatch, order):
    """Odd sizes, arrays in C or Fortran order and a strided xs: the lifted kernel and the same
    text with its sizes written in (main's text) agree bit for bit."""
    monkeypatch.setattr(numba_program, "ENABLED", [False])
    g, arrays, want = _rnn(3, 7, 5, 3, order)
    wide = np.zeros((5, 3, 14))
    wide[:, :, ::2] = arrays[1]
    arrays[1] = wide[:, :, ::2]  # (every other column of a wider array: not contiguous)
    lifted = tn.compile(g, backend="numba")
    got = lifted(*arrays)
    original = loop_source.LoopSource.source

    def literal(self):
        return sizes_written_in(original(self), self.dims)

    monkeypatch.setattr(loop_source.LoopSource, "source", literal)
    old = tn.compile(_rnn(3, 7, 5, 3, order)[0], backend="numba")
    assert _loop_handle(old).shared is not _loop_handle(lifted).shared
    assert "dims[" not in _loop_handle(old).shared.source
    for a, b, w in zip(got, old(*arrays), want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, w, rtol=1e-12, atol=1e-12)


def test_a_program_kernel_passes_its_loop_a_slice_of_its_dims(fresh):
    """Whole-program kernels calling the loop kernel: at B = 2 and 3 (same H, T) one program
    kernel and one loop kernel serve both, the loop's sizes read from the program's `dims`."""
    made = []
    for B, seed in [(2, 4), (3, 5)]:
        g, arrays, want = _rnn(B, 5, 4, seed)
        c = tn.compile(g, backend="numba")
        assert c.report.kernel == numba_program.WHOLE
        assert [r.kernel for r in c.report.loops] == [f"called from the {numba_program.WHOLE}"]
        for _ in range(2):
            for a, b in zip(c(*arrays), want):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        made.append((c.program_kernel.handle, _loop_handle(c)))
    (p2, l2), (p3, l3) = made
    assert p2.shared is p3.shared and l2.shared is l3.shared
    assert p2.shared.loops == [l2.shared]  # (the program's one loop module: imported once)
    assert len(p2.shared.kernel.signatures) == 1  # (one specialisation for both batches)
    source = p2.shared.source
    (call,) = re.findall(r"loop0\(\w+, [^,]+, [^,]+, (dims\[\d+:\d+\])", source)
    lo, hi = (int(v) for v in re.findall(r"\d+", call))
    for program, loop in made:  # (its slice of the program's dims: the loop's own)
        assert list(program.dims[lo:hi]) == list(loop.dims)


def test_by_default_a_loop_keeps_its_sizes_literal(monkeypatch):
    """The default rule: a B = 3 loop's kernel has its sizes written in and no `dims`."""
    monkeypatch.setattr(numba_loop, "_loops", {})
    monkeypatch.setattr(numba_program, "ENABLED", [False])
    _literal_loop(3, 7, 5, 6)
