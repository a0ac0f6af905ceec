"""The batch split of a rolled loop (issue 19): on the numba backend, a Python-run loop whose body
is row-wise in the batch (every step value's row r depends on row r of the carries and xs alone)
runs rows [0, B0) on the caller's thread and [B0, B) on one worker thread at once, each half
through the body compiled for its own row count (`rebatch`), reading and writing strided
row-slices of the same slab. The time-batched GEMMs outside the loop are split by
own_threads.py in the same calls.

Same bits as the unsplit loop: every op of a row-wise body computes a row from that row alone
with the same arithmetic whatever the row count (the packed step GEMM: each output element one
FMA chain over k; the fused kernels: per element). So the split runs only once the full body's
kernels are in place (`ready`: no Site or PackedSite of its program still waiting), and its
halves then take the full body's kernels (`adopt`): both sides of the background switch run the
same lowering. Under "auto" only bodies whose step GEMMs all run the packed kernel split
(OpenBLAS's per-row sums may depend on the row count), and only in calls of a program that
owns the threads (own_threads.py: BLAS at one thread, >= 2 CPUs, a BLAS policy of >= 2
threads). Before own_threads, "auto" split in calls with >= 2 BLAS threads: measured slower
for whole steps (BENCHMARKS.md "hpar": OpenBLAS's pool spinning on the worker's core)."""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import scan_columns, split_pack
from .backends import packed
from .backends.background import Site
from .backends.packed import PackedSite
from .codegen import GIVEN_BUFFERS
from .graph import Graph
from .own_threads import cpus, owning, submit, worker_ident, zero_fill  # noqa: F401 (cpus: tests)
from .plan_options import SIZE_ROWS, SPLIT_MIN_ROWS
from .scan_rebatch import rebatch
from .slab_halves import halves, halves_meet

SPLIT_CALLS = [0]  # loop calls run split so far (tests: the split ran)
# a call whose xs lie in the slab across both halves' rows (SplitRunner._apart) runs unsplit
UNSPLIT = " (calls whose xs rows in the slab cross the halves' rows run unsplit)"
STEP_LOOPS = [True]  # PlanOptions.step_loops unless off here (tools/ab_loop.py's "old" arm)
MIN_ROWS = SPLIT_MIN_ROWS  # "auto": each half at least this many rows (regions' plan reads it)


def gemm_ops(graph: Graph) -> tuple[int, int]:
    """(step GEMMs, of which packed) in a compiled body graph."""
    ops = [n.op for n in graph.nodes]
    return ops.count("matmul") + ops.count("packed_matmul"), ops.count("packed_matmul")


# ---- the runner -------------------------------------------------------------------------------

_ids = itertools.count()


def half_loop(compiled: Any, attrs: dict, fail: Callable, late: dict | None = None) -> Callable:
    """`loop(carries, xs, invariants, ys, hoisted, alias) -> final carries`: the half's steps,
    its xs and ys (length, rows, ...) row-slices of the caller's arrays (every carry is live: a
    body with carries it returns unchanged does not split, see `plan`). `late`: {xs position:
    a (rows, ...) array} for the xs the body reads after its first write into its rows
    (scan_xs.late_xs): when `alias` (they lie in the slab), each step's row is copied there
    first and the body reads the copy, as scan_run's runner does."""
    late = late or {}
    nc, nx = attrs["n_carry"], attrs["n_xs"]
    n_inv = len(attrs["body"].inputs) - nc - nx
    n_ys = len(attrs["body"].outputs) - nc
    cs = live = [f"a{k}" for k in range(nc)]
    xs, ys = [f"X{k}" for k in range(nx)], [f"Y{j}" for j in range(n_ys)]
    inv = [f"i{k}" for k in range(n_inv)]
    length, reverse = attrs["length"], attrs["reverse"]
    order = f"range({length - 1}, -1, -1)" if reverse else f"range({length})"
    rows = [f"reversed({p})" if reverse else p for p in xs + ys]
    step_x, step_y = [f"x{k}" for k in range(nx)], [f"y{j}" for j in range(n_ys)]
    args = cs + step_x + inv + ["*_h"] + step_y
    call = f"_fn({', '.join(args)})"
    copies = [f"                _P{k}[...] = x{k}\n                x{k} = _P{k}" for k in late]
    lines = [
        f"def loop({', '.join(cs + xs + inv + ys)}, _h, _alias=False, *, _fn, _fail{''.join(f', _P{k}' for k in late)}):",
        "    _t = None",
        "    try:",
        f"        for _t, {', '.join(step_x + step_y)}, in zip({order}, {', '.join(rows)}):"
        if rows
        else f"        for _t in {order}:",
        *(["            if _alias:", *copies] if copies else []),
        f"            {', '.join(live)}, = {call}" if live else f"            {call}",
        "    except Exception as e:",
        "        raise _fail(e, _t) from None",
        f"    return ({''.join(c + ', ' for c in live)})",
    ]
    namespace: dict[str, Any] = {}
    source = "\n".join(lines) + "\n"
    exec(builtins.compile(source, f"<tapernn split loop {next(_ids)}>", "exec"), namespace)  # noqa: S102
    loop = namespace["loop"]
    loop.__kwdefaults__ = {
        "_fn": compiled.program.fn,
        "_fail": fail,
        **{f"_P{k}": a for k, a in late.items()},
    }
    return loop


def _pending(fn: Callable) -> bool:
    """Whether a program's kernels are still to take over (a Site or a waiting PackedSite)."""
    for v in (fn.__kwdefaults__ or {}).values():
        if isinstance(v, Site) or isinstance(v, PackedSite) and v.kernel is None:
            return True
    return False


def sites(fn: Callable) -> dict[str, Site]:
    return {k: v for k, v in (fn.__kwdefaults__ or {}).items() if isinstance(v, Site)}


def adopt(full: Callable, half: Callable, full_sites: dict[str, Site]) -> str:
    """Give `half`'s program the kernels `full`'s runs now (`full_sites`: its Sites before they
    took over; same names and kernels: one pipeline and one lowering over graphs differing in
    rows alone); "" or why not."""
    a, b = full.__kwdefaults__ or {}, dict(half.__kwdefaults__ or {})
    if a.keys() != b.keys():
        return "the halves' programs differ from the full body's"
    for name, v in b.items():
        if isinstance(v, Site):
            was = full_sites.get(name)
            if was is None or was.handle is not v.handle:
                return f"{name}: another kernel than the full body's"
            if isinstance(a[name], Site):
                return f"{name}: the full body's kernel is not in place"
            b[name] = a[name]
        elif isinstance(v, PackedSite):
            if not isinstance(a[name], PackedSite) or a[name].kernel is None:
                return f"{name}: the full body's packed kernel is not in place"
            v.kernel = a[name].kernel
    half.__kwdefaults__ = b
    return ""


def lent_of(compiled: Any) -> tuple[list | None, list[int]]:
    """(a compiled body's prologue's dest list, its slots a weight's zeroed `.grad` may be lent
    for the packed panels: pack_scratch.py); (None, []) without them."""
    prologue = getattr(compiled, "prologue", None)
    slots = getattr(prologue.program, "pack_slots", None) if prologue is not None else None
    return (prologue.program.dest, list(slots.values())) if slots else (None, [])


class BufferPool:
    """The full body's buffers (1-D arrays) as space for the halves' own: each buffer a half's
    step program asks for (`take`) is a slice of one of them, first of the same position, then
    any with room; no two slices overlap. `missed`: some buffer found no room (then None)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.room = [
            (a.view(np.uint8), [0]) for a in arrays if a.ndim == 1 and a.flags.c_contiguous
        ]
        self.missed = False

    def once(self) -> Callable:
        """A provider (codegen.GIVEN_BUFFERS) for the first program compiled with it alone."""
        done = [False]

        def provide(buffers: list) -> list[np.ndarray] | None:
            if done[0]:
                return None
            done[0] = True
            return self.take(buffers)

        return provide

    def take(self, buffers: list) -> list[np.ndarray] | None:
        out = []
        for k, (size, dtype) in enumerate(buffers):
            dtype = np.dtype(dtype)
            nbytes = int(size) * dtype.itemsize
            order = ([self.room[k]] if k < len(self.room) else []) + self.room
            for raw, used in order:
                start = next(
                    (
                        a
                        for a in (
                            -(-used[0] // 64) * 64,
                            -(-used[0] // dtype.itemsize) * dtype.itemsize,
                        )
                        if a + nbytes <= raw.nbytes
                    ),
                    None,
                )
                if start is not None:
                    out.append(raw[start : start + nbytes].view(dtype))
                    used[0] = start + nbytes
                    break
            else:
                self.missed = True
                return None
        return out


class SplitRunner:
    """What a split loop's program calls: `full` (scan_run's runner of the whole batch) until the
    full body's kernels are in place, then -- in calls the rule lets split -- the two halves at
    once. `helpers`: scan_run's view makers of the full slab (ys_views, carry_views), its size,
    `over(slab, *xs)` (may the slab be written while xs lie in it) and `make_fail(compiled)`.
    `compile_half(graph)`: a half body compiled like the full one (with its prologue)."""

    def __init__(
        self,
        full: Callable,
        full_fn: Callable,
        graphs: list[Graph],
        attrs: dict,
        compile_half: Callable[[Graph], Any],
        helpers: dict,
        mode: str,
        columns: int = 0,
    ):
        self.full, self.full_fn, self.graphs, self.attrs = full, full_fn, graphs, attrs
        self.compile_half, self.helpers, self.mode = compile_half, helpers, mode
        batch = attrs["body"].inputs[0].shape[0]
        b0, _ = halves(batch)
        self.rows = ((0, b0), (b0, batch))
        self.loops: list[tuple[Callable, Callable | None]] | None = None
        self.failed = ""
        self.split_calls = 0
        self.report: Any = None  # the LoopReport (its kernel note says when the split fails)
        self.own_prologue = False
        self.late_xs: set[int] = set()  # (xs positions the halves copy a step's rows of)
        self.full_sites = sites(full_fn)  # (before they take over)
        self.over: Callable = lambda slab, *xs: False
        # (what the halves may keep beyond the full body's buffers: their own prologues')
        prologue = helpers["prologue"][0]
        self.own_bytes = 0 if prologue is None else helpers["prologue_bytes"]
        self.step_loops: Any = None  # each half's loop as one numba call (step_loop.Halves)
        self.pack: Any = None  # (the prologue's pack made by both threads: split_pack.Pack)
        # (scan_columns: both threads run one step loop, its GEMMs split by columns, where the
        # halves' step loops translate -- backends/step_columns.py; the weights' bytes)
        self.columns = columns

    def note(self) -> str:
        (a, b), (c, d) = self.rows
        when = "" if self.mode == "on" else " in owned calls (threads)"
        text = f"batch split over 2 threads (rows {a}:{b} | {c}:{d}){when}"
        return f"{text}; {scan_columns.note(self.columns)}" if self.columns else text

    def __call__(self, *args: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if self.failed or threading.get_ident() in worker_ident:
            return self.full(*args, out=out)
        if self.mode != "on" and not owning():  # "auto": in owned calls alone
            return self.full(*args, out=out)
        if self.loops is None and not self._prepare():
            return self.full(*args, out=out)
        return self._split(args, out)

    def _prepare(self) -> bool:
        if _pending(self.full_fn):
            return False
        attrs, h = self.attrs, self.helpers
        loops, outs, first = [], [], True
        halves_compiled: list = []
        lates: list = []  # (each half's late-read xs buffers, for its step loop)
        try:
            batch = attrs["body"].inputs[0].shape[0]
            # the halves' step buffers carved from the full body's (never run at once with
            # them: the full runner or the two halves run a call), apart from each other's
            pool = BufferPool(h["full_buffers"])
            for graph in self.graphs:
                rows = graph.inputs[0].shape[0]
                token = SIZE_ROWS.set((rows, batch))  # (lowered as the whole batch is)
                given = GIVEN_BUFFERS.set(pool.once())  # (the step program's, not the prologue's)
                try:
                    compiled = self.compile_half(graph)
                finally:
                    GIVEN_BUFFERS.reset(given)
                    SIZE_ROWS.reset(token)
                if pool.missed:
                    return self._fail("the halves' buffers do not fit in the full body's")
                why = adopt(self.full_fn, compiled.program.fn, self.full_sites)
                if why:
                    return self._fail(why)
                prologue = getattr(compiled, "prologue", None)
                pre = prologue.program.fn if prologue is not None else None
                outs.append([(o.shape, o.dtype) for o in prologue.graph.outputs] if pre else [])
                fail = h["make_fail"](compiled)
                late = self._late(compiled, len(loops))
                first = first and late is not None
                loops.append((half_loop(compiled, attrs, fail, late), pre))
                self.late_xs |= set(late or ())
                halves_compiled.append(compiled)
                lates.append(late)
        except Exception as e:  # noqa: BLE001 -- any failure: the full loop runs
            return self._fail(f"{type(e).__name__}: {e}")
        # the hoisted values (invariants alone: the packed weights) computed once for both by
        # the full body's prologue; the halves' own are then dropped with their graphs (their
        # buffers -- a packed weight each -- would be memory the report does not count)
        pre, full_outs = h["prologue"]
        if outs[0] == outs[1] == full_outs:
            loops = [(loop, pre if k == 0 else None) for k, (loop, _) in enumerate(loops)]
            self.own_prologue = False
        else:
            self.own_prologue = True
        self.graphs = []
        self.over = h["make_over"](first)
        self.pack = None if self.own_prologue else split_pack.plan(h.get("prologue_source"), pre)
        self.loops = loops
        from .backends.step_loop import attach

        enabled = STEP_LOOPS[0] and h.get("step_loops", 1)
        self.step_loops = attach(self, halves_compiled, enabled, lates)
        if self.columns and self.step_loops is not None:
            from .backends.step_columns import columns
            from .backends.step_loop import note

            kw = [c.program.fn.__kwdefaults__ or {} for c in halves_compiled]
            made = columns(self.step_loops, self.rows, kw)
            if isinstance(made, str):  # (the batch halves' step loops then)
                note(self, f"batch halves: {made}")
            else:
                self.step_loops = made
        return True

    def _late(self, compiled: Any, half: int) -> dict | None:
        """{xs position: the half's rows of the full runner's private row copy} for the xs the
        half body reads late ({} when it reads them all first), or None when its ys may not be
        written over its xs (a body returning a view of an xs; a late xs the full runner has no
        copy of): then the halves write a slab of their own when the xs lie in `out`."""
        order, late_ks = self.helpers["reads"](compiled)
        if order != "late":
            return {} if order == "first" else None
        nc = self.attrs["n_carry"]
        lo, hi = self.rows[half]
        private = getattr(self.full, "bound", None) or {}
        late = {}
        for k in late_ks:
            shape, a = compiled.graph.inputs[nc + k].shape, private.get(f"_P{k}")
            if a is not None and a.ndim == len(shape) + 1:  # (a block of every step's rows)
                a = a[0]
            if a is None or a.shape[1:] != tuple(shape[1:]) or a.dtype != self.helpers["dtype"]:
                return None
            late[k] = a[lo:hi]
            if late[k].shape != tuple(shape):
                return None
        return late

    def _fail(self, why: str) -> bool:
        self.failed = why
        if self.report is not None:
            self.report.kernel += f" (batch split off: {why})"
        return False

    def _split(self, args: tuple, out: np.ndarray | None) -> np.ndarray:
        attrs, h = self.attrs, self.helpers
        nc, nx = attrs["n_carry"], attrs["n_xs"]
        cs, xs, inv = args[:nc], args[nc : nc + nx], args[nc + nx :]
        dtype = h["dtype"]
        usable = (
            out is not None
            and out.flags.c_contiguous
            and out.dtype == dtype
            and self.over(out, *xs)
        )
        slab = out if usable else np.empty(h["size"], dtype)
        views = h["ys_views"](slab)
        n_ys = len(attrs["body"].outputs) - nc
        ys, inits = views[:n_ys], views[n_ys:]
        if usable and xs and not self._apart(slab, xs, ys):
            report = self.report  # (the line says "batch split": say which calls were not)
            if report is not None and UNSPLIT not in report.kernel:
                report.kernel += UNSPLIT
            return self.full(*args, out=out)
        for i, (_, k) in zip(inits, attrs.get("shifted", ())):
            i[...] = cs[k]
        # (late-read xs lying in the slab: each step's rows copied first, make_runner's `_alias`)
        alias = usable and any(np.may_share_memory(xs[k], slab) for k in self.late_xs)
        dest = h["lent"][0]  # (panels made in a weight's zeroed .grad, pack_scratch.py:
        # zeros again once both halves have ended, as scan_run's runner does -- but those the
        # backward overwrites next, `Lent.left`, unless the halves raised)
        try:
            first, second = self._halves(cs, xs, inv, ys, alias)
        except BaseException:
            if dest is not None:
                zero_fill(dest.unzeroed(False))
            raise
        ended = dest.unzeroed(True) if dest is not None else ()
        if ended:
            zero_fill(ended)
        for v, a, b in zip(h["carry_views"](slab), first, second):
            (lo0, hi0), (lo1, hi1) = self.rows
            v[lo0:hi0] = a
            v[lo1:hi1] = b
        self.split_calls += 1
        SPLIT_CALLS[0] += 1
        if out is not None and slab is not out:
            np.copyto(out, slab)
            return out
        return slab

    def _halves(self, cs: tuple, xs: tuple, inv: tuple, ys: list, alias: bool = False) -> tuple:
        """Both halves' final carries: the half of rows 0:b0 on this thread, the other on the
        worker, the hoisted values (the packed panels) computed once for both -- by both
        threads, in the halves' own hand-off, where the prologue is one pack (split_pack.py)."""
        (_, pre0), (_, pre1) = self.loops
        pack, bound = self.pack, None  # (bound: each half as one numba call, step_loop.Halves)
        w = inv[pack.inv] if pack is not None and not self.columns and self.step_loops else None
        out = pack.panels(w) if w is not None else None
        if out is not None:  # (the panels packed by both threads before the halves' loops)
            both = ((out,), (out,))
            bound = self.step_loops.choose(self, (cs, xs, inv, ys), both, alias)
            if bound is not None:
                return split_pack.run(w, out, pack.nr, *bound)
            packed.pack_panels(w, out, pack.nr)  # (the Python loops: packed here first)
        else:
            hoisted = pre0(*inv) if pre0 is not None else ()
            both = (hoisted, pre1(*inv) if pre1 is not None else hoisted)
            if self.step_loops is not None:
                bound = self.step_loops.choose(self, (cs, xs, inv, ys), both, alias)
        if bound is not None and self.columns:
            from .backends.step_columns import Bound, run_pair

            if isinstance(bound[0], Bound):  # (both sides run one loop: native columns)
                return run_pair(bound[0], bound[1], submit)
        if bound is not None:
            calls = [(fn, ()) for fn in bound]
        else:  # the Python loops over the halves' row slices
            calls = [
                (
                    loop,
                    [c[lo:hi] for c in cs]
                    + [x[:, lo:hi] for x in xs]
                    + list(inv)
                    + [y[:, lo:hi] for y in ys]
                    + [h, alias],
                )
                for (loop, _), (lo, hi), h in zip(self.loops, self.rows, both)
            ]
        future = submit(calls[1][0], *calls[1][1])
        try:
            first = calls[0][0](*calls[0][1])
        finally:
            second = future.result()
        return first, second

    def _apart(self, slab: np.ndarray, xs: tuple, ys: list) -> bool:
        """xs lying in the slab: no half's xs rows share memory with the other half's ys rows,
        of any step. `over` orders a step's writes after the reads of the xs rows they cover
        in ONE loop; the two halves run at once, unordered, so half 0 at step t may overwrite
        an xs row of half 1's step t' <= t that half 1 has not read yet (two FastLSTMs in one
        Sequencer: the first layer's projection at the rows' end, outputs off by 0.4).
        (~2 us a pair at (50, 32, 1024); too hard to tell: not apart.)"""
        for x in xs:
            if not np.may_share_memory(x, slab):
                continue
            if any(halves_meet(x, y, self.rows) for y in ys):
                return False
        return True


def plan(
    used: Graph, attrs: dict, compiled: Any, fixed: list[int], mode: str
) -> tuple[list[Graph] | None, str]:
    """(the two halves' body graphs, "") when `mode` ("auto", "on") lets this loop split, else
    (None, why not); `compiled` the full body (its step GEMMs: "auto" splits only packed ones)."""
    nc, nx = attrs["n_carry"], attrs["n_xs"]
    if fixed:
        return None, "carries the body returns unchanged"
    heads = used.inputs[: nc + nx]
    if not heads or not heads[0].shape:
        return None, "a carry or xs without a batch axis"
    batch = heads[0].shape[0]
    b0, b1 = halves(batch)
    if mode == "auto":
        if b1 < MIN_ROWS:
            return None, f"{batch} rows < {2 * MIN_ROWS}"
        total, packed = gemm_ops(compiled.graph)
        if not total or packed < total:
            return None, "step GEMMs not all packed"
    elif b1 < 1:
        return None, f"{batch} row"
    graphs = []
    for rows in (b0, b1):
        graph = rebatch(used, nc, nx, rows)
        if isinstance(graph, str):
            return None, graph
        graphs.append(graph)
    return graphs, ""
