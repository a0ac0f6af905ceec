"""The column split of a rolled loop's packed step GEMMs (issue 19, BENCHMARKS.md "hbig"): in an
owned program call (own_threads.py) a loop whose packed step weights are large runs WHOLE on the
caller's thread, and each step's `a @ W` computes its panels (output columns) [0, P/2) on the
caller and [P/2, P) on the split's worker at once -- instead of the batch split's two halves
(scan_split.py) that each stream the whole weight every step.

Why (measured, "hbig"): at (64, 100, 1024) f32 the packed recurrent weight is 16 MiB; two batch
halves each stream all of it from L3/DRAM per step and their loops cost +21 % CPU (hpar), where
two column halves stream 8 MiB each. The owned training step (A/B in one process, six runs at
load 8-13, autogroup nice -19) ran 0.96-1.05x torch nn.LSTM with the column split against
1.04-1.25x with the batch halves, at 7-22 % less CPU. At (32, 50, 512) (a
4 MiB weight) the batch halves were faster (130 vs 136 ms in a prototype: each half's
elementwise work and Python run on its own core, where the column split runs them on the caller
alone): hence the rule below.

Same bits as the serial driver: each panel is computed by the same code (packed_kernels._panels)
whichever thread runs it, into its own columns of `out`; so split = unsplit bit for bit.

Where the last-level cache holds the weights many times over, the batch halves are faster (an
Intel Xeon with 480 MiB of L3, "hrestI": (64, 100, 1024) f32 0.887-0.894x the column split's
wall per round, the same CPU, bit-equal gradients): the halves' streams of the weight hit in L3,
and what the column split adds is its per-step work on one thread -- the forward loop took 372
ms of wall for 210 ms of each thread's panels: the step's elementwise kernels and Python on the
caller (~0.7 ms of CPU a step) and two hand-offs a step, the other thread waiting. On Zen 4 (32
MiB of L3, twice the 16 MiB weight) the columns were faster ("hbig").

The rule (`rule`, shown in the loop's line of the compile report): the loop would split its batch
rows (scan_split.plan: numba, every step GEMM packed, ...) and its packed step weights hold >=
`min_bytes()` together (MIN_BYTES, or a quarter of the L3 if more); per call (`run`): an owned
call on the caller's thread, >= 2 panels."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .backends import packed
from .graph import Graph
from .own_threads import owning, submit, worker_ident

# the loop's packed step weights (bytes, together) from which their GEMMs split by columns:
# between the 4 MiB of (32, 50, 512) f32 (batch halves faster) and the 16 MiB of (64, 100, 1024)
# f32 (columns faster), the two shapes measured ("hbig"); above the 8 MiB of (32, 50, 512)
# float64, not measured (it keeps the batch halves it had); tests set it to 0. And at least a
# quarter of the L3 (`min_bytes`): the batch halves each stream the weights from the L3 they
# share -- Zen 3 / Zen 4 (32 MiB L3; "hbig"): columns faster at 16 MiB; an Intel Xeon (480 MiB
# L3): the batch halves 6-8 % faster at (64, 100, 1024) f32 with either packed kernel
# (BENCHMARKS.md "hloopI"). An L3 not found: MIN_BYTES alone
MIN_BYTES = 12 << 20
L3_SHARE = 4
_l3: list[int | None] = [None]  # the L3's bytes (`l3_bytes`; tests set 0: MIN_BYTES alone)
# a weight packed in two halves of its panels at once (`pack`) from this many bytes: as the
# column split's; the 4 MiB weights of (32, 50, 512) f32 packed slower in two halves in a step
# at load 12 (2.05 -> 3.5 ms a step: the worker's wake-up), BENCHMARKS.md "h512b"
PACK_MIN_BYTES = 12 << 20
SPLIT_GEMMS = [0]  # step GEMMs run split by columns so far (tests: the split ran)


def weight_bytes(graph: Graph) -> int:
    """The bytes of the distinct weights a compiled body's packed step GEMMs read."""
    weights = {n.inputs[1] for n in graph.nodes if n.op == "packed_matmul"}
    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in weights)


def rule(graph: Graph, mode: str) -> int:
    """The packed weights' bytes when a loop that splits its rows under PlanOptions.batch_split
    `mode` ("auto", "on") splits its step GEMMs by columns instead, else 0."""
    if mode not in ("auto", "on"):
        return 0
    nbytes = weight_bytes(graph)
    return nbytes if nbytes and nbytes >= min_bytes() else 0


# the native column split (backends/step_columns.py: both threads in one compiled step loop, a
# barrier a GEMM) runs instead of the batch halves from this many bytes of packed step weights
NATIVE_MIN_BYTES = 0


def native(graph: Graph, mode: str) -> int:
    """The packed weights' bytes when a loop that splits its rows under `mode` runs its split
    as native columns (where the step loops translate: else its batch halves), else 0; never
    where the Python column split runs (`rule`)."""
    if mode not in ("auto", "on") or rule(graph, mode):
        return 0
    nbytes = weight_bytes(graph)
    return nbytes if nbytes and nbytes >= NATIVE_MIN_BYTES else 0


def native_note(nbytes: int, rows: tuple, when: str) -> str:
    (a, b), (c, d) = rows
    return (
        f"batch split over 2 threads (rows {a}:{b} | {c}:{d}){when}; in the step loops, native"
        f" columns (packed weights {nbytes / 2**20:.1f} MiB >= {NATIVE_MIN_BYTES / 2**20:g} MiB)"
    )


def min_bytes() -> int:
    """The packed weights' bytes from which loops split by columns: MIN_BYTES, or a quarter
    of the L3 (L3_SHARE) if more."""
    return max(MIN_BYTES, l3_bytes() // L3_SHARE)


def l3_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """The L3 cache's size in bytes (sysfs, read once into `_l3`), 0 when not found."""
    if _l3[0] is None:
        size = 0
        for index in sorted(Path(root).glob("index*")):
            try:
                if (index / "level").read_text().strip() == "3":
                    text = (index / "size").read_text().strip().upper()
                    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                    size = int(text.rstrip("KMG")) * scale
            except (OSError, ValueError):
                size = 0
        _l3[0] = size
    return _l3[0]


def note(nbytes: int, when: str) -> str:
    return (
        "step GEMMs split by output columns over 2 threads (packed weights"
        f" {nbytes / 2**20:.1f} MiB >= {min_bytes() / 2**20:g} MiB; the loop runs whole){when}"
    )


def attach(fn: Any) -> int:
    """Have the PackedSites of a body program `fn` run their kernel through `run`; how many."""
    count = 0
    for v in (fn.__kwdefaults__ or {}).values():
        if isinstance(v, packed.PackedSite):
            v.run = run
            count += 1
    return count


def _panels_of(kernel: Any) -> Any:
    """packed_kernels._panels of the copy a driver `kernel` comes from (its geometry)."""
    return packed.module_of(kernel)._panels


def pack(w: np.ndarray, out: np.ndarray | None, nr: int | None) -> np.ndarray:
    """packed.pack_panels(w, out, nr); in an owned call on the caller's thread, a weight of
    >= PACK_MIN_BYTES packed in two halves of its panels at once (the caller and the worker: a
    copy, the same values)."""
    nr = nr or packed.panel_width(w.dtype)
    if (
        w.ndim != 2
        or w.nbytes < PACK_MIN_BYTES
        or w.shape[1] <= nr
        or not owning()
        or threading.get_ident() in worker_ident
    ):
        return packed.pack_panels(w, out, nr)
    npan = -(-w.shape[1] // nr)
    if out is None:
        out = np.empty((npan, w.shape[0], nr), w.dtype)
    h = npan // 2
    future = submit(packed.pack_panels, w[:, h * nr :], out[h:], nr)
    try:
        packed.pack_panels(w[:, : h * nr], out[:h], nr)
    finally:
        future.result()
    return out


def run(kernel: Any, a: np.ndarray, panels: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = a @ W as packed.run_kernel computes it; in an owned call on the caller's thread
    the panels split over the caller and the worker."""
    npan = panels.shape[0]
    if (
        npan < 2
        or not owning()
        or threading.get_ident() in worker_ident
        or not (a.flags.c_contiguous and panels.flags.c_contiguous and out.flags.c_contiguous)
        or not (a.dtype == panels.dtype == out.dtype)
        or panels.shape[2] != packed.width_of(kernel, panels.dtype)
        or a.shape[0] != out.shape[0]
    ):
        return packed.run_kernel(kernel, a, panels, out)
    panels_of = _panels_of(kernel)
    if BALANCE[0]:
        _balanced(panels_of, a, panels, out, npan)
    else:  # (the middle: no clock, no bookkeeping on this per-step path)
        h = npan // 2
        future = submit(panels_of, a, panels, out, h, npan)
        try:
            panels_of(a, panels, out, 0, h)
        finally:
            future.result()
    SPLIT_GEMMS[0] += 1
    return out


def _balanced(panels_of: Any, a, panels, out, npan: int) -> None:
    """run's split at the point `_SPLIT` keeps for this (a's shape, panels, dtype), moved by one
    panel toward both halves ending together once the worker's lag -- its end after the
    caller's, in the caller's panels' time, averaged over the calls -- exceeds one panel."""
    key = (a.shape, npan, a.dtype.char)
    h, lag = _SPLIT.get(key, (npan // 2, 0.0))
    h = min(max(h, 1), npan - 1)
    ended = [0.0]
    start = _now()
    future = submit(_half, panels_of, a, panels, out, h, npan, ended)
    try:
        panels_of(a, panels, out, 0, h)
        mine = _now()
    finally:
        future.result()
    lag = 0.75 * lag + 0.25 * (ended[0] - mine) * h / max(mine - start, 1e-9)
    if lag > 1 and h < npan - 1:
        h, lag = h + 1, 0.0
    elif lag < -1 and h > 1:
        h, lag = h - 1, 0.0
    _SPLIT[key] = (h, lag)


# (the caller's panels of a split step GEMM, per (a's shape, panels, dtype): moved by one panel
# a call toward the two halves ending at once -- a slower vCPU or a late wake-up of the worker
# gets fewer panels; every panel is computed by the same code whichever thread runs it, so
# the split point changes no bit): off -- no gain measured at (64, 100, 1024) f32 at load
# 13-16 (0.976-0.981x per round, the points stayed within 1-5 panels of the middle),
# BENCHMARKS.md "h512b"; tools/ab_serial.py --arms old balance to measure it quiet
BALANCE = [False]
_SPLIT: dict[tuple, tuple[int, float]] = {}  # (h, the worker's averaged lag in panels)
_now = time.perf_counter


def _half(panels_of: Any, a, panels, out, first: int, last: int, ended: list) -> None:
    """The worker's panels [first, last), and when they ended (`ended[0]`)."""
    panels_of(a, panels, out, first, last)
    ended[0] = _now()
