"""`either(rows, roots, fast, slow, args)`: a step loop's pass or its strided twin, the twin
typed and compiled only where numba's types cannot rule it out (backends/step_pass.py). A pass
reads its operands' rows as C-contiguous (c_row); its twin `_pass<k>s` runs the same scalar
lines over rows of any stride. Before, the step kernel branched between the two at run time,
so numba typed, compiled and linked the twin into every step loop (1.4-2.6 s of a 10-21 s
step-loop compile, BENCHMARKS.md "hcold8") although the built-in cells' forward loops never
have such rows. Here, when every root array of the pass's operands is a C array to numba (each
row contiguous whatever the call), `either` is the pass alone; else the same run-time branch
as before. Inlined into the step kernel (numba's IR): no function of its own to compile. Its
own module: the step loops that import it carry this file's digest in their text
(step_pass.EITHER), so a change here renames them, and only them.

`roots` are the roots whose rows may be strided in a call; the others' rows are contiguous by
the caller's check (step_fuse.strided: the step loop's xs, invariants and ys, the same arrays
every step, whose numba type "A" -- the backward loops' saved rows, column blocks of the slab --
would otherwise compile the twin in every backward loop, BENCHMARKS.md "hcoldB"). Where `rows`
fails with only C roots that check was skipped: a ValueError, never the pass on strided rows."""

from __future__ import annotations

from numba.core import types
from numba.extending import overload


def either(rows, roots, fast, slow, args):
    """fast(*args) if `rows` (the run-time test: every root's rows contiguous), else
    slow(*args); `roots` only for their numba types (in Python: the same choice)."""
    (fast if rows else slow)(*args)


_UNCHECKED = "a step loop's pass on strided rows its caller did not check (step_fuse.strided)"


@overload(either, inline="always")
def _either(rows, roots, fast, slow, args):
    if all(isinstance(r, types.Array) and r.layout == "C" for r in roots):

        def impl(rows, roots, fast, slow, args):
            if not rows:
                raise ValueError(_UNCHECKED)
            fast(*args)

        return impl

    def impl(rows, roots, fast, slow, args):
        if rows:
            fast(*args)
        else:
            slow(*args)

    return impl
