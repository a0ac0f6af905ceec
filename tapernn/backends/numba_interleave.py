"""Step loops' kernels compiled with LLVM's loop vectoriser interleaving two vectors (issue 19,
BENCHMARKS.md "h256L"). A gate loop of a step pass (vecmath's sigmoid / tanh over a row's
columns) is one long dependency chain per vector -- ~70 instructions, ~40 cycles of latency --
and LLVM's cost model gives a loop that large an interleave count of 1: each iteration waits for
the last, the FMA pipes idle. Two interleaved vectors per iteration hide that latency: the
(16, 256) f32 forward gate pass runs ~35 % faster (one thread, thread CPU). numba has no
per-loop pragma, so the count is LLVM's command-line option `-force-vector-interleave`, set
for the step loop's compile alone, under numba's global compiler lock (no other numba compile
of the process sees it), and set back to LLVM's default (0: the cost model's choice) after.

Bits: interleaving runs the same scalar operations of the same elements (a loop's iterations
are independent; no fast-math flag allows a reduction to be reordered): the same results, only
in a different instruction order (tests/test_step_loop.py: bit-equal to the Python loops).

The kernel text names the count (`mark`): a kernel cached by a tree that compiled without it
has another digest, so no process loads machine code compiled the other way; the count is a
fixed part of the text, like the kernel's own lines.

512-bit vectors (BENCHMARKS.md "hgate"): LLVM's x86 cost model prefers 256-bit vectors on
AVX-512 CPUs (its "prefer-256-bit" tuning), so the gate loops ran ymm while the FMA pipes take
zmm: where the CPU has AVX-512 (packed.isa), a step loop is compiled with LLVM's
`-force-vector-width` at 512 bits of its widest float (16 float32 or 8 float64 lanes; vector
division, the gates' bound, is twice as wide too). The same scalar operations per element
again: the same bits (tests/test_step_interleave.py). The mark names the bits (none: the old
text, whose digests AVX2 machines keep). A forced width makes LLVM print its vectoriser's
analysis of every loop it did not vectorise ("remark: <unknown>:0:0: loop not vectorized: ...",
67 lines for one cold FastLSTM model) to the process's stderr: `_remarks_dropped` keeps those
lines from the user (anything else written to stderr meanwhile is written after the compile).

Short loops (issue 19, BENCHMARKS.md "hvec5"): LLVM's loop vectoriser leaves a loop of a known
trip count under 16 scalar (`-vectorizer-min-trip-count`): at tutorial sizes (H = 5) every gate
loop of a whole-loop kernel has 5-20 elements, so its sigmoids and tanhs ran one value at a time
(~11 ns each; 125 of them were 1.45 us of the (1, 5, 5) LSTM forward kernel's 1.9). Whole-loop and
whole-program kernels are compiled with the count at TRIP[0] (`small_trips`, the same lock and
restore as `interleaved`) and their text names it (`trip_mark`): the same scalar operations per
element, the same bits (tests/test_small_trips.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)

# vectors interleaved in a step loop's vectorised loops, read when a loop is translated (0 or 1:
# LLVM's own choice; tools/ab_interleave.py's "old" arm)
COUNT = [2]
# vector bits of a step loop's vectorised loops (0: the cost model's; None: not read yet)
BITS: list[int | None] = [None]
_OPTION = "-force-vector-interleave"
_WIDTH = "-force-vector-width"
# the smallest trip count a whole-loop / whole-program kernel's loops are vectorised at (LLVM's
# default: LLVM_TRIP; 0: the default)
TRIP = [4]
LLVM_TRIP = 16
_TRIP = "-vectorizer-min-trip-count"
_TRIP_MARK = re.compile(r"^# \(compiled with LLVM's -vectorizer-min-trip-count=(\d+)")
_MARK = re.compile(
    r"^# \(compiled with LLVM's -force-vector-interleave=(\d+)(?:, (\d+)-bit vectors)?"
)


def bits() -> int:
    """512 where the CPU has AVX-512 (packed.isa's flags), else 0 (LLVM's choice of width)."""
    if BITS[0] is None:
        from .packed import isa

        BITS[0] = 512 if isa() == "avx512" else 0
    return BITS[0]


def mark(count: int | None = None, width: int | None = None) -> str:
    """A step loop module's first line: the count and vector bits its kernel is compiled with
    (COUNT's and bits()' now)."""
    count = COUNT[0] if count is None else count
    width = bits() if width is None else width
    wide = f", {width}-bit vectors" if width else ""
    return f"# (compiled with LLVM's -force-vector-interleave={count}{wide}: numba_interleave.py)"


def count_in(source: str) -> int:
    """The count a step loop module's text names (0: none named, the cost model's)."""
    m = _MARK.match(source)
    return int(m.group(1)) if m else 0


def lanes_in(source: str, key: tuple) -> int:
    """The lanes of the vector bits a step loop module's text names for the widest float of
    its argument types `key` (0: none named, or no float array: the cost model's width)."""
    from numba.core import types

    m = _MARK.match(source)
    floats = [
        t.dtype.bitwidth
        for t in key
        if isinstance(t, types.Array) and isinstance(t.dtype, types.Float)
    ]
    if not (m and m.group(2) and floats):
        return 0
    return int(m.group(2)) // max(floats)


def _option(name: str, value: int) -> bool:
    try:
        import llvmlite.binding as ll

        ll.set_option("tapernn", f"{name}={int(value)}")
    except Exception as e:  # noqa: BLE001 -- another llvmlite: LLVM's own choice, never wrong
        log.debug("tapernn: %s not set (%s): the cost model's choice", name, e)
        return False
    return True


def _set(value: int) -> bool:
    return _option(_OPTION, value)


def _set_width(value: int) -> bool:
    return _option(_WIDTH, value)


@contextlib.contextmanager
def interleaved(count: int, lanes: int = 0) -> Iterator[None]:
    """numba compiles in the block with LLVM's loop vectoriser interleaving `count` vectors of
    `lanes` elements (0 or 1: the cost model's choice; held under numba's global compiler
    lock: no other thread's compile in between); LLVM's defaults (0) again after, also when
    the compile fails."""
    from numba.core.compiler_lock import global_compiler_lock

    if count <= 1 and lanes <= 1:
        yield
        return
    with global_compiler_lock:
        on = count > 1 and _set(count)
        wide = lanes > 1 and _set_width(lanes)
        try:
            with _remarks_dropped() if wide else contextlib.nullcontext():
                yield
        finally:
            if on:
                _set(0)
            if wide:
                _set_width(0)


def trip_mark() -> str:
    """A whole-loop or whole-program kernel module's first line (with its newline): the
    vectoriser's smallest trip count it is compiled with (TRIP's now; "": LLVM's default)."""
    trip = TRIP[0]
    if not 0 < trip < LLVM_TRIP:
        return ""
    return f"# (compiled with LLVM's {_TRIP}={trip}: numba_interleave.py)\n"


def trip_in(source: str) -> int:
    """The smallest trip count a kernel module's text names (0: none named, LLVM's default)."""
    m = _TRIP_MARK.match(source)
    return int(m.group(1)) if m else 0


@contextlib.contextmanager
def small_trips(source: str) -> Iterator[None]:
    """numba compiles in the block with LLVM's loop vectoriser taking loops of the trip count
    kernel text `source` names (trip_in; none: LLVM's default, nothing set), under numba's
    global compiler lock; LLVM's default again after, also when the compile fails."""
    from numba.core.compiler_lock import global_compiler_lock

    trip = trip_in(source)
    if not trip:
        yield
        return
    with global_compiler_lock:
        on = _option(_TRIP, trip)
        try:
            yield
        finally:
            if on:
                _option(_TRIP, LLVM_TRIP)


REMARK = b"remark: "  # (LLVM's diagnostic printer: "remark: <location>: <message>")


@contextlib.contextmanager
def _remarks_dropped() -> Iterator[None]:
    """File descriptor 2 points at a temporary file in the block; after it, the lines written
    there that are not LLVM remarks are written to the real stderr (another thread's output
    in the meantime comes late, not lost). No redirection where descriptor 2 cannot be
    duplicated (closed) or no temporary file can be made: the remarks are printed then."""
    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(tempfile.TemporaryFile())
            saved = os.dup(2)
        except OSError:
            held = None
        if held is None:
            yield
            return
        stack.callback(os.close, saved)
        _flush()
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            _flush()
            os.dup2(saved, 2)
            held.seek(0)
            kept = [x for x in held.read().splitlines(True) if not x.startswith(REMARK)]
            if kept:
                os.write(2, b"".join(kept))


def _flush() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def named(source: str, key: tuple) -> contextlib.AbstractContextManager:
    """`interleaved` at the count and the lanes a step loop module's text names, for a compile
    for argument types `key`."""
    return interleaved(count_in(source), lanes_in(source, key))
