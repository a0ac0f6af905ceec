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
fixed part of the text, like the kernel's own lines."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

log = logging.getLogger(__name__)

# vectors interleaved in a step loop's vectorised loops, read when a loop is translated (0 or 1:
# LLVM's own choice; tools/ab_interleave.py's "old" arm)
COUNT = [2]
_OPTION = "-force-vector-interleave"
_MARK = re.compile(r"^# \(compiled with LLVM's -force-vector-interleave=(\d+)")


def mark(count: int | None = None) -> str:
    """A step loop module's first line: the count its kernel is compiled with (COUNT's now)."""
    count = COUNT[0] if count is None else count
    return f"# (compiled with LLVM's -force-vector-interleave={count}: numba_interleave.py)"


def count_in(source: str) -> int:
    """The count a step loop module's text names (0: none named, the cost model's)."""
    m = _MARK.match(source)
    return int(m.group(1)) if m else 0


def _set(value: int) -> bool:
    try:
        import llvmlite.binding as ll

        ll.set_option("tapernn", f"{_OPTION}={int(value)}")
    except Exception as e:  # noqa: BLE001 -- another llvmlite: LLVM's own choice, never wrong
        log.debug("tapernn: %s not set (%s): the cost model's interleave", _OPTION, e)
        return False
    return True


@contextlib.contextmanager
def interleaved(count: int) -> Iterator[None]:
    """numba compiles in the block with LLVM's loop vectoriser interleaving `count` vectors
    (held under numba's global compiler lock: no other thread's compile in between); LLVM's
    default (0) again after, also when the compile fails."""
    from numba.core.compiler_lock import global_compiler_lock

    if count <= 1:
        yield
        return
    with global_compiler_lock:
        on = _set(count)
        try:
            yield
        finally:
            if on:
                _set(0)
