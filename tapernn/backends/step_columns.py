"""The native column split of a split loop (issue 19, BENCHMARKS.md "hcolN"): both threads of an
owned call (the caller and own_threads' worker) run the SAME compiled step loop at once -- the
half's step loop (step_loop.py) with every packed step GEMM rewritten -- and per GEMM

1. each thread packs its rows of the GEMM's input `a` into the whole batch's packed `a`
   (packed_kernels._pack_a's row blocks; where the sides' rows do not start at a block, each
   puts its rows into a whole-batch `a` and both pack all of it),
2. a barrier (every row of `a` written),
3. each thread computes panels (output columns) for ALL rows into a whole-batch output
   (packed_kernels._packed_tiles: the unsplit driver's code and bits) -- from DYNAMIC_FROM
   panels on, CHUNK at a time as it claims them (numba_spin.claim), else its half,
4. a barrier (every column written), then each thread goes on with its own rows of the output,
   its elementwise work on its rows as the batch halves do.

So each thread streams about half the weight a step (the batch halves each stream all of it)
and the elementwise work stays on both threads (the Python column split this replaced ran it on
the caller alone, with two hand-offs a step). Same bits as the batch halves and the unsplit
loop: every output element is computed by the same code from the same operands.

The barrier (numba_spin.arrive) spins a little, then yields its core; it never hangs on a side
that failed: each side's wrapper sets the shared abort word on an exception, the other's
barrier reads it and returns, and `run_pair` raises the first failure (the side that saw the
abort raises Aborted, a TapernnError, when it is alone)."""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TapernnError
from . import step_selects
from .step_loop import Halves, StepLoop

CALLS = [0]  # loop calls run as native columns so far (tests: the split ran)
ABORTS = [0]  # sides that returned at a barrier because the other had failed (tests)
SPINS = 16  # rounds (8 pauses each) a thread spins at a barrier before it yields its core
# cycles waited at the barriers so far (tools: the wait a step): the caller's after its GEMMs,
# before them, the worker's after, before
WAITED = [0, 0, 0, 0]

# panels a claim of the native columns' dynamic split (3: 12 vectors, 4 whole tiles of 3); from
# DYNAMIC_FROM panels on, the two threads claim a GEMM's panels CHUNK at a time (a thread that a
# preemption or a slower core holds back computes fewer: no wait at the barrier for its half;
# every panel is the same code whichever thread runs it), below it each its half
CHUNK = 3
DYNAMIC_FROM = 12
_SPIN = (
    "from tapernn.backends.numba_spin import arrive as _arrive, claim as _claim,"
    " unclaim as _unclaim  # "
    + hashlib.sha1((Path(__file__).parent / "numba_spin.py").read_bytes()).hexdigest()[:20]
)
_PACKED = re.compile(r"^( +)(\w+) = _packed\(np\.ascontiguousarray\((\w+)\), (\w+), (.+)\)$")
_EMPTY = re.compile(r"^np\.empty\(\((\w+)\.shape\[0\], (\w+)\.shape\[1\]\), \w+\.dtype\)$")


class Aborted(TapernnError, RuntimeError):
    """A side of a native column split returned at a barrier: the other side failed."""


class Site:
    """A packed step GEMM of the loop: its panels' parameter, its output's (a parameter: `target`,
    or None and the weight whose columns it has), `swap`: the target's argument is replaced by
    the rows of the whole-batch output (no copy after the GEMM)."""

    def __init__(self, panels: str, target: str | None, weight: str | None, swap: bool):
        self.panels, self.target, self.weight, self.swap = panels, target, weight, swap


def rewrite(source: str, alone: set[str], mr: int) -> tuple[str, list[Site]]:
    """(a half's step-loop module text with its packed GEMMs split by columns over two threads,
    its GEMM sites in order); `alone`: the array parameters sharing memory with no other (a
    GEMM writing one of them writes the whole-batch output's rows in its place); `mr`: the
    packed kernel's rows a block when both sides' rows start at a multiple of it -- each side
    then packs its rows' blocks of the whole batch's `a` (packed_kernels._pack_a's layout, the
    drivers' first pass over `a`); 0: each side puts its rows into a whole-batch `a` and both
    pack all of it (the driver's _panels). TapernnError if the text has no packed GEMM or one
    the rewrite does not know."""
    lines = source.split("\n")
    start = next(i for i, s in enumerate(lines) if s.startswith("def kernel("))
    loop = next(i for i in range(start, len(lines)) if lines[i].startswith("    for _s in range("))
    sites: list[Site] = []
    out = lines[:loop] + ["    _n = 0"]
    for i in range(loop, len(lines)):
        m = _PACKED.match(lines[i])
        if m is None:
            out.append(lines[i])
            continue
        pad, value, a, panels, target = m.groups()
        k = len(sites)
        empty = _EMPTY.match(target)
        if empty is None and not re.fullmatch(r"\w+", target):
            raise TapernnError(f"native columns: a packed GEMM's output {target!r}")
        name = None if empty else target
        sites.append(Site(panels, name, empty.group(2) if empty else None, name in alone))
        if mr:
            out.append(f"{pad}_pack_rows({a}, _ca{k}[lo // {mr}:(hi + {mr - 1}) // {mr}])")
        else:
            out.append(f"{pad}_put(_ca{k}[lo:hi], {a})")
        sync = [f"{pad}_n += 1", f"{pad}if not _arrive(_bar, _me, _n, _spins):", f"{pad}    break"]
        out += sync
        half = f"{panels}.shape[0] // 2"
        span = f"_me * ({half}), {half} + _me * ({panels}.shape[0] - {half})"
        if mr:
            npan, tiles = (
                f"{panels}.shape[0]",
                f"{pad}    _tiles(_ca{k}, _co{k}.shape[0], {panels}, _co{k}",
            )
            out += [
                f"{pad}if {npan} >= {DYNAMIC_FROM}:",
                f"{pad}    _c = _claim(_bar, {CHUNK})",
                f"{pad}    while _c < {npan}:",
                f"    {tiles}, _c, min(_c + {CHUNK}, {npan}))",
                f"{pad}        _c = _claim(_bar, {CHUNK})",
                f"{pad}else:",
                f"{tiles}, {span})",
            ]
        else:
            out.append(f"{pad}_drv(_ca{k}, {panels}, _co{k}, {span})")
        out += sync
        if mr:
            out += [f"{pad}if _me == 0:", f"{pad}    _unclaim(_bar)"]
        if name is None:
            out.append(f"{pad}{value} = _co{k}[lo:hi]")
        else:
            if not sites[-1].swap:
                out.append(f"{pad}_put({name}, _co{k}[lo:hi])")
            out.append(f"{pad}{value} = {name}")
    if not sites:
        raise TapernnError("native columns: the step loop has no packed GEMM")
    head = out.index(next(s for s in out if s.startswith("def kernel(")))
    extra = "".join(f", _ca{k}, _co{k}" for k in range(len(sites)))
    out[head] = out[head][:-2] + f", _me, _bar, _spins{extra}):"
    drv = next(s for s in out if s.startswith("_drv = "))
    imports = [_SPIN] + ([] if step_selects.PUT in out else [step_selects.PUT])
    imports += [drv.replace("_drv = ", "_tiles = ").replace("._panels", "._packed_tiles")]
    imports += [drv.replace("_drv = ", "_pack_rows = ").replace("._panels", ".pack_rows")]
    first = out.index(drv) + 1
    return "\n".join(out[:first] + imports + out[first:]), sites


class Shared:
    """What both sides of one loop share: the barrier's words and each GEMM site's whole-batch
    input and output buffers (made at the first call, for the sites' shapes then)."""

    def __init__(self, batch: int):
        from .numba_spin import WORDS

        self.batch = batch
        self.bar = np.zeros(WORDS, np.int64)
        self.buffers: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.lock = threading.Lock()

    def pair(self, k: int, inner: int, width: int, dtype: Any, mr: int) -> tuple:
        """GEMM site k's (input: packed in blocks of `mr` rows, or plain at mr 0; output)."""
        key = (k, inner, width, np.dtype(dtype).str)
        shape = (-(-self.batch // mr), inner, mr) if mr else (self.batch, inner)
        with self.lock:
            made = self.buffers.get(key)
            if made is None:
                made = self.buffers[key] = (
                    np.zeros(shape, dtype),
                    np.zeros((self.batch, width), dtype),
                )
        return made

    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.buffers.values())


class ColumnLoop(StepLoop):
    """A half's step loop rewritten (`rewrite`) for side `me` of a native column split: its
    arguments are the half's (StepLoop.args) and the barrier's and GEMMs' shared arrays."""

    def __init__(self, half: StepLoop, shared: Shared, me: int, alone: set[str], mr: int):
        source, self.sites = rewrite(half.source, alone, mr)
        self.mr = mr
        super().__init__(source, half.arrays, half.length, half.reverse, half.late)
        self.checks, self.passes = half.checks, half.passes
        self.shared, self.me = shared, me
        head = re.search(r"\ndef kernel\((.*?)\):", half.source)
        self.params = [p.strip() for p in head.group(1).split(",")]

    def args(self, args: tuple) -> tuple:
        base = list(super().args(args))
        named = dict(zip(self.params, base))
        lo, hi = named["lo"], named["hi"]
        extra = []
        for k, site in enumerate(self.sites):
            panels = named[site.panels]
            width = named[site.target or site.weight].shape[1]
            ca, co = self.shared.pair(k, panels.shape[1], width, panels.dtype, self.mr)
            if site.swap:
                base[self.params.index(site.target)] = co[lo:hi]
            extra += [ca, co]
        return (*base, self.me, self.shared.bar, SPINS, *extra)


class Bound:
    """A side's ColumnLoop with its arguments, called with none; an exception sets the abort
    word (the other side's barrier returns), a return after the other side's abort raises
    Aborted."""

    __slots__ = ("args", "loop")

    def __init__(self, loop: ColumnLoop, args: tuple):
        self.loop, self.args = loop, args

    def __call__(self):
        from .numba_spin import ABORT

        bar = self.loop.shared.bar
        try:
            value = self.loop(*self.args)
        except BaseException:
            bar[ABORT] = 1
            raise
        if bar[ABORT]:
            ABORTS[0] += 1
            raise Aborted("native column split: the other thread's side failed")
        return value


def run_pair(first: Bound, second: Bound, submit: Any) -> tuple:
    """Both sides' final carries: `second` on the worker (`submit`), `first` here; the barrier's
    words zeroed first. A failure of either is raised (the one that is not Aborted)."""
    from .numba_spin import LINE, WORDS
    from .numba_spin import WAITED as AT

    bar = first.loop.shared.bar
    bar[:WORDS] = 0
    future = submit(second)
    errors: list[BaseException] = []
    values = []
    try:
        values.append(first())
    except BaseException as e:  # noqa: BLE001 -- raised below, after the worker's side
        errors.append(e)
    try:
        values.append(future.result())
    except BaseException as e:  # noqa: BLE001
        errors.append(e)
    if errors:
        raise next((e for e in errors if not isinstance(e, Aborted)), errors[0])
    CALLS[0] += 1
    for k in range(4):  # (each side's waits after a GEMM, before one)
        WAITED[k] += int(bar[AT + (k // 2) * LINE + k % 2])
    return values[0], values[1]


def columns(halves: Halves, rows: tuple, defaults: list[dict]) -> Halves | str:
    """Both sides' ColumnLoops of a split loop's step loops `halves` (rows: each side's (lo, hi);
    `defaults`: each half's program's bound values), or why not."""
    shared = Shared(rows[1][1])
    made = []
    try:
        driver = re.search(r"\n_drv = sys\.modules\['(\w+)'\]", halves.loops[0].source)
        if driver is None:
            raise TapernnError("native columns: no packed driver")
        mr = sys.modules[driver.group(1)].MR
        mr = mr if rows[0][1] % mr == 0 else 0
        for me, (loop, bound) in enumerate(zip(halves.loops, defaults)):
            arrays = [v for v in bound.values() if isinstance(v, np.ndarray)]
            alone = {
                k
                for k, v in bound.items()
                if isinstance(v, np.ndarray)
                and v.flags.c_contiguous
                and not any(u is not v and np.may_share_memory(u, v) for u in arrays)
            }
            made.append(ColumnLoop(loop, shared, me, alone, mr))
    except TapernnError as e:
        return str(e)
    out = ColumnHalves(made)
    if halves.remake is not None:
        remake = halves.remake

        def again(keep: frozenset) -> Halves | str:
            h = remake(keep)
            return h if isinstance(h, str) else columns(h, rows, defaults)

        out.remake = again
    return out


class ColumnHalves(Halves):
    """Halves (step_loop.py: when the loops take over, their compile, the report's notes) whose
    two loops are the sides of a native column split: `choose` gives the two Bound sides."""

    def choose(self, runner: Any, whole: tuple, hoisted: tuple, alias: bool = False):
        bound = super().choose(runner, whole, hoisted, alias)
        if bound is None:
            return None
        note = "step GEMMs split by output columns in one numba loop on both threads"
        if runner.report is not None and note not in runner.report.kernel:
            runner.report.kernel += f" ({note}: native columns)"
        return tuple(Bound(b.loop, b.args) for b in bound)
