"""The column split of a rolled loop's packed step GEMMs (issue 19, BENCHMARKS.md "hbig", "hcolN"):
in an owned program call (own_threads.py) a loop whose packed step weights are large splits
each step GEMM `a @ W` by its panels (output columns) over the caller and the split's worker --
each thread streams half the weight a step -- instead of the batch split's two halves
(scan_split.py) that each stream the whole weight every step. It runs natively
(backends/step_columns.py): both threads run one compiled step loop, each its panels for all
rows and then its rows' elementwise work, a barrier pair a GEMM.

Why (measured, "hbig"): at (64, 100, 1024) f32 the packed recurrent weight is 16 MiB; two batch
halves each stream all of it from L3/DRAM per step and their loops cost +21 % CPU (hpar), where
two column halves stream 8 MiB each. The owned training step (A/B in one process, six runs at
load 8-13, autogroup nice -19, Zen 4) ran 0.96-1.05x torch nn.LSTM with the column split
against 1.04-1.25x with the batch halves, at 7-22 % less CPU -- that split then ran the loop in
Python on the caller, the GEMM's halves handed to the worker twice a step, the elementwise work
on the caller alone. The native split replaced it ("hcolN": at (64, 100, 1024) f32 on an Intel
Xeon, forced on, 0.92-0.93x its wall per round at load 15-19, bit-equal gradients).

Same bits as the serial driver: each panel is computed by the same code (packed_kernels)
whichever thread runs it, into its own columns of `out`; so split = unsplit bit for bit.

Where the last-level cache holds the weights many times over, the batch halves are as fast or
faster (an Intel Xeon with 480 MiB of L3: "hrestI", and "hcolN": native columns 0.98-0.99x the
halves' wall at (64, 100, 1024) f32 and 0.95-1.0x at (32, 50, 512) f32, at load 11-19, where
each barrier waits on the other thread's preemptions): the halves' streams of the weight hit in
L3. On Zen 4 (32 MiB of L3, twice the 16 MiB weight) the columns were faster ("hbig").

The rule (`rule`, shown in the loop's line of the compile report): the loop would split its batch
rows (scan_split.plan: numba, every step GEMM packed, ...) and its packed step weights hold >=
`min_bytes()` together (MIN_BYTES, or a quarter of the L3 if more); it runs where the halves'
step loops translate (step_loop.py; else the batch halves in Python), in owned calls."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from . import aligned
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


def note(nbytes: int) -> str:
    """What a loop's report line adds to its batch split's text (the columns run where its
    step loops do: step_columns' note says so once they have)."""
    return (
        "in its step loops, step GEMMs split by output columns over the 2 threads (packed"
        f" weights {nbytes / 2**20:.1f} MiB >= {min_bytes() / 2**20:g} MiB)"
    )


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
        out = aligned.empty((npan, w.shape[0], nr), w.dtype)  # (packed.pack_panels')
    h = npan // 2
    future = submit(packed.pack_panels, w[:, h * nr :], out[h:], nr)
    try:
        packed.pack_panels(w[:, : h * nr], out[:h], nr)
    finally:
        future.result()
    return out
