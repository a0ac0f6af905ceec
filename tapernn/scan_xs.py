"""Where a loop's xs may lie while the loop writes its slab (PlanOptions.xs_in_slab, dz_in_gates):
whether a compiled body reads its xs before its first write into its ys rows (reads_xs_first,
late_xs: the runner hands a late-reading body copies of those rows), and the runners' check that
the xs arrays of a call lie where the steps still to come do not write (writable_over_xs).
Split from scan_run, which re-exports these names."""

from __future__ import annotations

import numpy as np

from .executor import Compiled
from .ops.registry import PSEUDO, get_op, rows_writable
from .scan_ir import scan_rows_of


def reads_xs_first(
    compiled: Compiled, n_carry: int, n_xs: int, n_live: int, shifted: tuple = ()
) -> str:
    """ "first": the compiled body reads every xs (through views) before its first write into
    the storage of any of its ys laid out in the slab's rows (`n_live` carries first), so a step's ys rows may overwrite that step's xs rows;
    "late": it does not (the runner hands it copies of the rows read late: `late_xs`);
    "aliased": it returns a view of an xs (a carry or ys read after the row is overwritten:
    the loop needs a slab of its own)."""
    aliased, late = _late_reads(compiled, n_carry, n_xs, n_live, shifted)
    return "aliased" if aliased else "late" if late else "first"


def late_xs(
    compiled: Compiled, n_carry: int, n_xs: int, n_live: int, shifted: tuple = ()
) -> list[int]:
    """The xs (0-based among the xs) the compiled body reads after its first write into its
    rows (`reads_xs_first`): only these need the runner's per-step copies."""
    return _late_reads(compiled, n_carry, n_xs, n_live, shifted)[1]


def _late_reads(compiled, n_carry, n_xs, n_live, shifted) -> tuple[bool, list[int]]:
    graph, plan = compiled.graph, compiled.program.plan
    xs = {x: k for k, x in enumerate(graph.inputs[n_carry : n_carry + n_xs])}
    # the ys in the slab's rows (not the carries, locals, nor the shifted ys' own blocks)
    moved = {j for j, _ in shifted}
    n_ys = len(graph.outputs) - n_live
    rows = [graph.outputs[n_live + j] for j in range(n_ys) if j not in moved]
    outs = {plan.storage.get(o) for o in rows} - {None}
    if any(plan.root.get(o, o) in xs for o in graph.outputs):
        return True, []
    last_read: dict[int, int] = {}
    first_write = len(graph.nodes)
    for k, n in enumerate(graph.nodes):
        if n.op in PSEUDO or get_op(n.op).view:
            continue
        for i in n.inputs:
            x = plan.root.get(i, i)
            if x in xs:
                last_read[xs[x]] = k
        if plan.storage.get(n) in outs:
            first_write = min(first_write, k)
    return False, sorted(j for j, k in last_read.items() if k >= first_write)


def writable_over_xs(attrs: dict, dtype: np.dtype, body_ok: bool, memo: bool = False):
    """`over(slab, *xs)`: whether the loop may write the slab while its xs lie in it: every xs
    that may share memory with it has its rows where the steps still to come do not write
    (ops.registry.rows_writable: row t inside the slab's row t, or ahead of / behind the rows
    in step order), and the body reads its xs first (`body_ok`). `memo` (the runners': the
    full check cost ~20-40 us a training step, a fifth of a (20, 8, 16) numba step, 8 % of a
    (1, 5, 5) NumPy one): the answer is kept per layout key -- per xs whether it is a view of
    the slab's memory owner, and then its strides (its shape is the runner's program's, fixed
    when compiled) -- and the full check runs for a key not seen before. Sound because one
    runner serves one line of a generated program, whose xs are the same view expressions of the
    same storages every call: their offsets in the slab follow from that key. A user's array
    can also be an xs (a gradient that is a view of a Sequencer's `output`, which lies in the
    forward's slab that the backward's loop writes): the views tapernn hands out of one slab
    with the same shape and strides lie in the same time rows (h or c blocks of row t), so the
    answer does not depend on their offset; an offset in the key cost ~1 us an xs (+15 % of a
    (1, 5, 5) NumPy step) and was measured not worth it. Only a view made from the slab's raw
    `.base` (or np.frombuffer over it) could shift rows under the same key."""
    if memo:
        full = writable_over_xs(attrs, dtype, body_ok)
        answers: dict[tuple, bool] = {}

        def remembered(slab: np.ndarray, *xs: np.ndarray) -> bool:
            owner = slab.base
            if owner is None:
                owner = slab
            # (a list made first: a generator costs ~0.1 us more per xs; strides alone, not
            # (shape, strides): a runner's xs shapes are its program's, fixed when compiled,
            # and the key's tuples are all alive at once -- at (1, 5, 5) ~0.4 KiB of a
            # training loop's tracemalloc peak, through the interpreter's tuple free lists)
            key = tuple([x.strides if x.base is owner or x is owner else None for x in xs])
            found = answers.get(key)
            if found is None:
                found = answers[key] = full(slab, *xs)
            return found

        return remembered
    may_share = np.may_share_memory
    rows = scan_rows_of(attrs)
    if rows is None:
        return lambda slab, *xs: not any(may_share(x, slab) for x in xs)
    _, start, row, length = rows
    item, reverse = dtype.itemsize, bool(attrs.get("reverse"))
    ts = (0, length - 1)

    def over(slab: np.ndarray, *xs: np.ndarray) -> bool:
        lo = None
        for x in xs:
            if not may_share(x, slab):
                continue
            if not body_ok or x.ndim == 0 or x.shape[0] != length or x.size == 0:
                return False
            if lo is None:  # (the pointers only when an xs lies in the slab: ~1-3 us each)
                lo = slab.__array_interface__["data"][0] + start * item
            first, last = x[0], x[length - 1]
            if min(first.strides, default=0) < 0:
                return False
            extent = sum((n - 1) * st for n, st in zip(first.shape, first.strides)) + item
            at = [first.__array_interface__["data"][0], last.__array_interface__["data"][0]]
            if not rows_writable(at, [a + extent for a in at], ts, lo, row * item, length, reverse):
                return False
        return True

    return over
