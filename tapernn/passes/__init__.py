"""The compiler's pass pipeline: `DEFAULT` is a plain list read top to bottom; a pass is any
`Graph -> Graph` function. `tn.set_default_passes` replaces the list used by `tn.compile`.

Order matters in one place: hoisting runs before gate fusion, so the per-gate input projections
are first stacked over time and then fused, and in backward dx_t = dz_t @ W_x^T is hoisted
before gate fusion could pair it with the recurrent dh_t = dz_t @ W_h^T of the same step.
"""
from __future__ import annotations

from ..errors import ArgumentTypeError
from .batch_slices import batch_sliced_elementwise
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code
from .driver import CompileReport, Pass, PassRecord, run_passes
from .fold import fold_constants
from .fuse_elementwise import fuse_elementwise
from .gates import fuse_gates
from .hoist import hoist_across_time
from .simplify import simplify_views
from .stacks import share_stacks
from .step_sums import sum_within_steps
from .zeros import propagate_zeros, specialize_inputs

DEFAULT: list[Pass] = [
    eliminate_dead_code,
    fold_constants,
    propagate_zeros,
    eliminate_common_subexpressions,
    hoist_across_time,  # x_t@W for all t -> one matmul; sum_t x_t^T dz_t -> one matmul
    eliminate_common_subexpressions,  # hoisted stacks of the same per-step values become one
    fuse_gates,  # sum_k g_k@W_k^T -> one matmul; x@W_i, x@W_f, ... -> x@[W_i W_f ...]
    eliminate_common_subexpressions,  # per-step weight concats become one
    simplify_views,  # rows-of-step then columns-of-gate slices: one slice
    batch_sliced_elementwise,  # the four gates' x@W_k + h@U_k: one add on the 4H block
    batch_sliced_elementwise,  # ... then + [b_i b_f b_o b_g], then one sigmoid for i, f, o
    batch_sliced_elementwise,
    eliminate_common_subexpressions,  # the per-step bias concats become one
    share_stacks,  # [dz_r dz_z]_t and its stack over t: views of [dz_r dz_z dz_n]_t's (GRU)
    sum_within_steps,  # peephole gradients: sum each step's dz*c rows, stack T rows, not T*B
    fuse_elementwise,  # gate nonlinearities and cell updates: one node per chain
    eliminate_dead_code,
]

_default: list[Pass] | None = None


def default_passes() -> list[Pass]:
    return list(DEFAULT if _default is None else _default)


def check_passes(passes) -> list[Pass]:
    """`passes` as a list, or an ArgumentTypeError (a TypeError) naming the first entry that is not a callable pass
    (a name string is the common slip: pass the function, e.g. `passes.eliminate_dead_code`)."""
    if isinstance(passes, (str, bytes)) or not hasattr(passes, "__iter__"):
        raise ArgumentTypeError(f"a pass list is a list of functions Graph -> Graph, got "
                        f"{type(passes).__name__}")
    passes = list(passes)
    for k, p in enumerate(passes):
        if not callable(p):
            hint = (f"; use tapernn.passes.{p}" if isinstance(p, str) and p in __all__ else "")
            raise ArgumentTypeError(f"pass {k} is {p!r} ({type(p).__name__}), not a function "
                                    f"Graph -> Graph{hint}")
    return passes


def set_default_passes(passes: list[Pass] | None) -> None:
    """Use `passes` wherever no pipeline is given (None restores `DEFAULT`)."""
    global _default
    _default = None if passes is None else check_passes(passes)


__all__ = ["DEFAULT", "eliminate_dead_code", "fold_constants", "propagate_zeros",
           "specialize_inputs", "eliminate_common_subexpressions", "fuse_gates",
           "hoist_across_time", "fuse_elementwise", "simplify_views",
           "batch_sliced_elementwise", "share_stacks", "sum_within_steps", "CompileReport",
           "Pass", "PassRecord", "run_passes", "default_passes", "set_default_passes"]
