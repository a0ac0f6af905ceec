"""`PlanOptions`: the switches and thresholds of the optimisation tier (region planner, fused
kernels, backend, inline sigmoid), passed to `compile`; moved out of memory.py as it was (memory
re-exports it). The kernel reads only `regions`, `backend` and `inline_sigmoid`: whether to call
that tier."""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

# (rows, batch) while scan_split compiles a loop body for `rows` of its `batch` rows: the size
# thresholds of the planner and the lowering (strided_min_bytes, kernel_min_size, the numba
# lone-op and exact-sigmoid sizes) then decide as for the whole batch, so both halves are
# planned and lowered as the whole body is (same kernels, same forms: the split changes no bit)
# the most elements of a loop body's value for a numba loop kernel (backends/numba_loop.py's
# MAX_SIZE; the measurements behind it are there): larger bodies run in the Python loop
LOOP_MAX_SIZE = 4096
# batch_split "auto": each batch half at least this many rows (two of the packed kernel's 4-row
# blocks; scan_split.MIN_ROWS)
SPLIT_MIN_ROWS = 8
SIZE_ROWS: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "size_rows", default=None
)


def lowering_size(shape: tuple, size: int | None = None) -> int:
    """The element (or, given `size`, byte) count of a value of `shape` that the size thresholds
    read (SIZE_ROWS)."""
    size = math.prod(shape) if size is None else size
    rows = SIZE_ROWS.get()
    if rows is not None and shape and shape[0] == rows[0]:
        return size // rows[0] * rows[1]
    return size


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
    is lowered to one function called per use (fused_lowering `_fused_kernel`), not inline.

    backend: how fused elementwise groups are lowered, "numpy" or "numba" (one compiled loop
    per group, tapernn/backends); "" means the current `tapernn.set_backend` choice.

    layout: the recurrent state of scan loops (passes/layout.py): "batch" keeps carried states
    (B, n) as traced; "feature" holds them as (n, B), so the recurrent GEMM is U @ h^T
    ((4H, H) @ (H, B)); "auto" times the recurrent GEMMs alone in both orientations and, only
    when feature-major's take at most PREFILTER (0.7) of batch-major's, the loop's whole step
    (forward + backward, compiled) in both layouts, once per body, shape, dtype, backend and
    BLAS (passes/layout_rule.py, scan_layout.py); feature-major only when the whole step's best
    round and the median ratio of its rounds are both at most MARGIN - CLOSE (0.85) of
    batch-major's, batch-major at >= 1.05x; a close call between falls back to batch-major (the
    measured rule) and is re-checked on the real training steps a few steps in (one more
    compile, nn/layout_recheck.py). The compile report says which and why (the measured times).

    xs_in_slab: (with regions) a loop's time-batched input (the hoisted input projection x @ W
    + b of a rolled cell) computed straight into the rows of the loop's own result that its
    steps write (the gate activations the forward saves), each step's row read before it is
    overwritten: no buffer of its own (issue 16; OpDef.rows, regions.slab_placements). A
    narrower input (GRU's 3H projection, 4H rows) goes as a strided window over the last
    columns of each of the loop's batch rows (a GEMM output of leading dimension the rows'
    width): its row (t, b) inside the loop's row (t, b), so the batch split's halves stay apart
    (scan_split); else at the rows' end, each of its rows at or past the loop's row of its step.

    dz_in_gates: (with compile_shared's `n_saved`: a TrainingPair) the backward's reverse loop
    writes its slab (final dh, dc | the T rows of dZ) over the prefix of the forward's saved
    slab (final h, c | the T gate rows it has read by then) instead of a buffer of its own
    (issue 16; donate.py): only when no other output of the forward (kept or saved) and no
    later read of the backward lies in that prefix, and the loop's runner checks every call
    that each step's gate rows lie inside the step's own row or behind it (no row written
    before the step reads them: ops.registry.rows_writable; else it writes a slab of its
    own and copies it). FastLSTM, LSTM (with peepholes: their sums leave the loop) and GRU
    (its r*h redone in the backward, so its rows are 4H on both sides).

    grad_into_min_bytes: a split backward's returned values of at least this many bytes that
    one ufunc computes (the weight gradients' GEMMs) get a slot of Program.dest: the caller
    (nn.packing.Packing.compute_into) has them computed into a parameter's zeroed `.grad`
    instead of a temporary added to it (issue 19). Below it the temporary is cheaper than the
    per-call checks (a zero test and an overlap test per gradient); 0: off. The same size
    bounds a pair forward's per-call transposed weight copy made in the weight's zeroed `.grad`
    (Program.scratch_slots, Packing.scratch_into; 0: off too).
    tap_room_min_bytes: get_grad_hidden_state's copies of a plain Sequencer backward's arguments
    go into the saved slab's dead gate rows (TrainingPair.tap_room) only when those rows hold at
    least this many bytes; below it fresh copies are cheaper than placing them (the placement
    cost 5 us of a 20 us (1, 5, 5) numba step); 0: whenever there are such rows.
    grad_input_tail_min_bytes: a pair's backward (dz_in_gates) computes its returned input
    gradient dZ @ W_x of at least this many bytes over the dead tail of the donated dZ rows
    (donate.tail_gemms: the steady loop then holds no array of its own for it, issue 19);
    below it, a fresh array as before (its few GEMMs cost more than they save); 0: any size.

    inline_sigmoid: sigmoids lowered to inline ufunc lines (fused_lowering.py; accurate in both
    tails, no call frame); False: one call of the op's forward.
    packed_gemm: on the numba backend, a loop's step GEMMs over large loop-invariant weights run
    a microkernel over the weight packed once per loop call (scan_pack.py); False: OpenBLAS.
    batch_split: on the numba backend, a Python-run loop whose body is row-wise in the batch
    runs its two row halves at once on two threads (scan_split.py; same bits with packed step
    GEMMs, with OpenBLAS ones where its row halves keep the whole GEMM's: blas_bits). "auto"
    (the default): when each half has >= 8 rows and every step GEMM is packed, in calls its
    program owns (own_threads); "on": whenever the body is row-wise (tests); "off": never.
    own_threads: a program with a loop that splits its batch rows runs its calls with OpenBLAS
    at ONE thread, and its time-batched GEMMs of >= own_threads.MIN_FLOPS (or MIN_OUT_BYTES of
    output) in two halves on the caller's thread and the split's worker (rows or columns of the
    output: no thread-dependent sums), the caller's BLAS setting restored after (own_threads.py).
    "auto" (the default): in calls with >= 2 CPUs in os.sched_getaffinity and a BLAS policy of
    >= 2 threads (set_blas_threads "auto" or an int >= 2; never at 1 or None); "on": every call
    (tests); "off": never (blas_tuning's thread choice as before). The compile report's "threads"
    line.
    step_loops: each half of a split loop runs as ONE numba call (its step program translated
    into an @njit loop calling the same kernels: backends/step_loop.py; same bits), from the
    second split call on; False: a Python loop calling the step program per step.
    step_direct: in those translated loops, the gate kernels whose values the step
    concatenates into its saved ys row write their columns of that row themselves (a kernel
    whose output is cut into several parts runs once per part over those columns) and the
    concatenate's copies go (backends/step_fuse.py; same bits); False: into scratch, then the copy.
    bias_in_gemm: in a program that owns the threads, a time-batched GEMM followed by the
    in-place add of a bias row (an input projection's) adds each half's bias on the thread
    that computed the half, right after it, and a GEMM followed by the column sum of another
    array (a bias gradient) sums half of the columns in each GEMM half (own_bias.py; same
    bits); False: one serial add (sum) after the join.
    gemm_in_slab: in a program that owns the threads, a float32 time-batched GEMM of depth
    >= 512 computed into a loop's slab allocated in the call (the input projection), nothing
    else written to the slab before it, runs the packed kernel (AVX-512's: own_room.KINDS) in
    two row halves, its weight's panels packed into the slab's unwritten bytes (own_room.py: no
    memory beyond the report's; other bits than OpenBLAS's, fixed per configuration); False:
    OpenBLAS's halves.
    """

    regions: bool = True
    strided_min_bytes: int = 1 << 20
    strided_min_run: int = 256
    escaping_min_run: int = 128
    kernel_min_uses: int = 16
    kernel_min_size: int = 4096
    backend: str = ""
    inline_sigmoid: bool = True
    xs_in_slab: bool = True
    dz_in_gates: bool = True
    layout: str = "auto"
    packed_gemm: bool = True
    grad_into_min_bytes: int = 1 << 16
    tap_room_min_bytes: int = 1 << 16
    grad_input_tail_min_bytes: int = 1 << 16
    batch_split: str = "auto"
    own_threads: str = "auto"
    step_loops: bool = True
    step_direct: bool = True
    bias_in_gemm: bool = True
    gemm_in_slab: bool = True

    def __post_init__(self) -> None:
        from .errors import ArgumentError, ArgumentTypeError

        if self.own_threads not in ("auto", "on", "off"):
            raise ArgumentError(
                f"PlanOptions.own_threads is 'auto', 'on' or 'off', got {self.own_threads!r}"
            )
        if self.batch_split not in ("auto", "on", "off"):
            raise ArgumentError(
                f"PlanOptions.batch_split is 'auto', 'on' or 'off', got {self.batch_split!r}"
            )

        if self.layout not in ("batch", "feature", "auto"):
            raise ArgumentError(
                f"PlanOptions.layout is 'batch', 'feature' or 'auto', got {self.layout!r}"
            )
        if not _KINDS:
            _KINDS.extend((f.name, f.type) for f in dataclasses.fields(self))
        for name, kind in _KINDS:  # (a string "no" would have switched a flag on)
            value = getattr(self, name)
            if kind == "bool" and value is not True and value is not False:
                if not isinstance(value, np.bool_):
                    raise ArgumentTypeError(
                        f"PlanOptions.{name} is True or False, got {value!r} ({type(value).__name__})"
                    )
            elif (
                kind == "int"
                and (type(value) is not int or value < 0)
                and (
                    isinstance(value, (bool, np.bool_))
                    or not isinstance(value, (int, np.integer))
                    or value < 0
                )
            ):
                raise ArgumentTypeError(
                    f"PlanOptions.{name} is an integer >= 0, got {value!r} ({type(value).__name__})"
                )
        if self.backend not in ("", "numpy", "numba", "auto"):  # (else an error at first call)
            raise (ArgumentError if isinstance(self.backend, str) else ArgumentTypeError)(
                f"PlanOptions.backend is 'numpy', 'numba', 'auto' or '' (the current choice), got"
                f" {self.backend!r} ({type(self.backend).__name__})"
            )


_KINDS: list[tuple[str, str]] = []  # (field name, annotation), once
_FIELDS = tuple(f.name for f in dataclasses.fields(PlanOptions))
_dataclass_init = PlanOptions.__init__


@functools.wraps(_dataclass_init)
def _init(self, *args, **kwargs) -> None:
    """The dataclass's __init__, an unknown or extra argument refused by name (Python's
    TypeError named only the first unknown keyword, not the fields there are)."""
    try:
        _dataclass_init(self, *args, **kwargs)
    except TypeError as e:  # (looked at only when it fails: construction costs nothing more)
        from .errors import ArgumentTypeError, TapernnError

        unknown = sorted(set(kwargs) - set(_FIELDS))
        if isinstance(e, TapernnError) or not (unknown or len(args) > len(_FIELDS)):
            raise
        what = f"no field {', '.join(map(repr, unknown))}" if unknown else "too many arguments"
        raise ArgumentTypeError(
            f"PlanOptions has {what}; its fields are {', '.join(_FIELDS)}"
        ) from None


PlanOptions.__init__ = _init
DEFAULT_OPTIONS = PlanOptions()
