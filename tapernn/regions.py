"""Regions of storages: which concat pieces are computed straight into their slot of the
concat, when a strided region is cheap enough to write into, and whether two regions overlap
(on dummy arrays shaped like the storages: NumPy compares pointers and strides only)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Graph, Node
from .ops.registry import get_op

PSEUDO = ("input", "constant")
_TooHard = getattr(getattr(np, "exceptions", np), "TooHardError", Exception)


def is_view(n: Node) -> bool:
    return n.op not in PSEUDO and get_op(n.op).view


@dataclass(frozen=True)
class PlanOptions:
    """The planner's and the code generator's tuning values (production defaults); passed in to
    `compile`, never module globals.

    regions: in place into regions of larger values and concat pieces computed into their slot
    (False: the planner before regions, in place only over a whole dead buffer; kept for
    before/after comparisons).

    strided_min_bytes, strided_min_run: values are written into a strided region (a gate's
    columns of a step's rows, a dz_k's columns of [dz_i dz_f ...]) only in storages of at least
    that many bytes and with contiguous runs of at least that many elements: a ufunc on strided
    operands pays per row (here: (8, 32) float32 tanh 0.40 -> 0.88 us, (32, 256) mul 1.0 ->
    2.7 us). Without the limits FastLSTM's training step went (8, 20, 32) 0.77 -> 0.99 ms and
    (32, 50, 128) 20.5 -> 21.3 ms; with them those keep their speed, and (32, 50, 256), where
    the saved gates in the projection save 6.25 MiB, runs as before (68.7 vs 68.4 ms).
    Contiguous regions: any size.

    escaping_min_run: a value returned by the program (the gates the forward saves for
    backward) is written into a strided region from runs of this many elements on: the
    alternative is not a reused buffer but a fresh array per step, kept until backward. At
    (32, 50, 128) that is two T-stacks for the peephole LSTM (resident 14.05 -> 10.95 MiB
    float32; FastLSTM 12.36 -> 10.80) for 3 % of the step's time in float32.

    kernel_min_uses, kernel_min_size: a fused program used this often, on values this large,
    is lowered to one function called per use (codegen `_fused_kernel`) instead of inline lines.

    backend: how fused elementwise groups are lowered, "numpy" or "numba" (one compiled loop
    per group, tapernn/backends); "" means the current `tapernn.set_backend` choice.
    """

    regions: bool = True
    strided_min_bytes: int = 1 << 20
    strided_min_run: int = 256
    escaping_min_run: int = 128
    kernel_min_uses: int = 16
    kernel_min_size: int = 4096
    backend: str = ""


DEFAULT_OPTIONS = PlanOptions()


def cheap_strides(region: np.ndarray, storage_bytes: int, options: PlanOptions,
                  escaping: bool = False) -> bool:
    if region.flags.c_contiguous:
        return True
    run = 1
    for n, s in zip(reversed(region.shape), reversed(region.strides)):
        if s != run * region.itemsize:
            break
        run *= n
    min_run = options.strided_min_run
    if escaping:
        min_run = min(min_run, options.escaping_min_run)
    return storage_bytes >= options.strided_min_bytes and run >= min_run


def concat_slots(c: Node):
    """(piece index, piece, index of its slot in the concat's result) for each operand."""
    axis = int(c.attrs["axis"]) % c.ndim
    offset = 0
    for j, piece in enumerate(c.inputs):
        width = piece.shape[axis]
        yield j, piece, (slice(None),) * axis + (slice(offset, offset + width),)
        offset += width


def placements(graph: Graph, root: dict[Node, Node], options: PlanOptions
               ) -> tuple[dict, set, dict]:
    """p -> (concat, steps into the concat's array) for each concat piece p that can be computed
    straight into its slot: a computed non-view value written by `out=`, used once by that
    concat and placed nowhere else (seen through a reshape when the slot is contiguous)."""
    placed: dict[Node, tuple[Node, tuple]] = {}
    slot_of: dict[Node, int] = {}
    concats: set[Node] = set()
    inputs = set(graph.inputs)
    for c in graph.nodes:
        if c.op != "concat":
            continue
        for j, piece, index in concat_slots(c):
            q, steps = piece, (("getitem", index),)
            if q.op == "reshape" and q.inputs[0].op not in PSEUDO:
                q, steps = q.inputs[0], steps + (("reshape", q.inputs[0].shape),)
            if q.op in PSEUDO or q in inputs or is_view(q) or not get_op(q.op).supports_out \
                    or q in placed or c.inputs.count(piece) != 1 or root[q] is not q:
                continue
            placed[q] = (c, steps)
            slot_of[q] = j
            concats.add(c)
    # slots must be true writable views (a reshape of a strided slot would copy): check on a
    # dummy array from each placement root down; a piece that fails is computed as usual
    for c in [c for c in graph.nodes if c in concats and c not in placed]:
        _check_slots(c, np.empty(c.shape, c.dtype), placed, concats, options)
    return placed, concats, slot_of


def _check_slots(c: Node, region: np.ndarray, placed: dict, concats: set,
                 options: PlanOptions) -> None:
    base = region if region.base is None else region.base
    for q in [q for q, (parent, _) in placed.items() if parent is c]:
        sub = apply_steps(region, placed[q][1])
        if sub is None or not np.shares_memory(sub, base) \
                or not cheap_strides(sub, base.nbytes, options):
            del placed[q]
            if q in concats:  # its own pieces stay placed, into q's own storage
                _check_slots(q, np.empty(q.shape, q.dtype), placed, concats, options)
        elif q in concats:
            _check_slots(q, sub, placed, concats, options)
    if not any(parent is c for parent, _ in placed.values()):
        concats.discard(c)


def apply_steps(region: np.ndarray, steps: tuple) -> np.ndarray | None:
    for kind, arg in steps:
        if kind == "getitem":
            region = region[arg]
        else:
            try:
                region = region.view()
                region.shape = arg  # raises instead of copying
            except (AttributeError, ValueError):
                return None
    return region if region.flags.writeable else None


def bounds(a: np.ndarray) -> tuple[int, int]:
    lo = hi = a.__array_interface__["data"][0]
    for n, s in zip(a.shape, a.strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + a.itemsize


def overlap(a: np.ndarray, ab: tuple, b: np.ndarray, bb: tuple) -> bool:
    if a.size == 0 or b.size == 0 or ab[1] <= bb[0] or bb[1] <= ab[0]:
        return False
    if a.flags.c_contiguous and b.flags.c_contiguous:
        return True
    try:
        return bool(np.shares_memory(a, b, max_work=10_000))
    except _TooHard:
        return True
