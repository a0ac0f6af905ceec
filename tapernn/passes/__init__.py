"""The compiler's pass pipeline: `DEFAULT` is a plain list read top to bottom, one named entry
per rewrite (repetition is an explicit `until_stable(...)`); a pass is any `Graph -> Graph`
function. `tn.set_default_passes` replaces the list used by `tn.compile`.

Order matters where a pass declares it (`must_follow`, checked by the driver): hoisting runs
before gate fusion, so the per-gate input projections are first stacked over time and then
fused, and in backward dx_t = dz_t @ W_x^T is hoisted before gate fusion could pair it with the
recurrent dh_t = dz_t @ W_h^T of the same step.
"""

from __future__ import annotations

from ..errors import ArgumentTypeError
from .batch_slices import batch_sliced_elementwise
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code
from .driver import (
    CompileReport,
    Pass,
    PassRecord,
    PlanStats,
    check_order,
    must_follow,
    run_passes,
    until_stable,
)
from .fold import fold_constants
from .fuse_elementwise import fuse_elementwise
from .gates import fuse_gate_matmuls, fuse_gates, fuse_row_sums, merge_matmul_sums_within_steps
from .hoist import (
    hoist_across_time,
    merge_matmul_sums_over_time,
    merge_row_sums,
    pull_slices_out_of_sums,
    pull_transposes_out_of_sums,
    stack_index_grads,
    stack_matmuls_over_time,
)
from .layout import feature_major_loops
from .loop_operands import contiguous_loop_weights
from .merge_sums import merge_column_sums
from .merge_xs import merge_concatenated_ops, merge_gate_xs
from .merge_ys import merge_concatenated_ys, share_ys_columns
from .push_out import push_out_of_loops
from .simplify import (
    flip_transposed_products,
    index_grads_to_concat,
    simplify_view_chains,
    simplify_views,
)
from .split_concat import split_concat_matmuls
from .stacks import share_stacks
from .step_sums import sum_within_steps
from .zeros import propagate_zeros, specialize_inputs

DEFAULT: list[Pass] = [
    eliminate_dead_code,
    fold_constants,
    propagate_zeros,
    eliminate_common_subexpressions,
    split_concat_matmuls,  # scan bodies: concat([x, h]) @ W -> x @ W[:D] + h @ W[D:]
    push_out_of_loops,  # scan bodies: invariant work once, time-parallel work batched over T
    feature_major_loops,  # carried (B, n) states held as (n, B) where PlanOptions.layout says
    merge_gate_xs,  # small loops: per-gate xs added to h @ W_k, one xs (one add after fusion)
    # hoisting across time
    stack_matmuls_over_time,  # x_t @ W for all t -> one matmul of the stacked x_t
    pull_transposes_out_of_sums,  # sum_t (x_t^T dz_t)^T -> (sum_t x_t^T dz_t)^T
    merge_matmul_sums_over_time,  # sum_t x_t^T dz_t -> one matmul of the stacked operands
    merge_row_sums,  # sum_t rowsum(dz_t) (bias gradients) -> one sum of the stack
    pull_slices_out_of_sums,  # sum_k b_k[idx] -> (sum_k b_k)[idx]
    stack_index_grads,  # the gradient of x from its per-step slices x[t]: the stack of them
    eliminate_common_subexpressions,  # hoisted stacks of the same per-step values become one
    # gate fusion
    merge_matmul_sums_within_steps,  # sum_k g_k @ W_k^T -> one matmul
    fuse_gate_matmuls,  # x @ W_i, x @ W_f, ... -> x @ [W_i W_f ...]
    fuse_row_sums,  # the per-gate bias-gradient sums of the stacks -> one
    eliminate_common_subexpressions,  # per-step weight concats become one
    merge_concatenated_ys,  # a loop's concatenated gate-gradient ys: one ys, the concat a view
    share_ys_columns,  # a loop's ys that is columns of another ys: read from it, not written
    # views
    simplify_view_chains,  # rows-of-step then columns-of-gate slices: one slice
    index_grads_to_concat,  # per-gate gradients of a split block: one concat
    flip_transposed_products,  # weight gradients computed in the parameter's own layout
    merge_concatenated_ops,  # a merged xs [x @ W_k + b_k]_k: one add on the fused GEMM's block
    merge_column_sums,  # column sums of a rolled loop's slab views (bias, peephole grads): one
    # the four gates' x@W_k + h@U_k: one add on the 4H block, then + [b_i b_f b_o b_g], then
    # one sigmoid for i, f, o
    until_stable(batch_sliced_elementwise),
    eliminate_common_subexpressions,  # the per-step bias concats become one
    share_stacks,  # [dz_r dz_z]_t and its stack over t: views of [dz_r dz_z dz_n]_t's (GRU)
    sum_within_steps,  # peephole gradients: sum each step's dz*c rows, stack T rows, not T*B
    fuse_elementwise,  # gate nonlinearities and cell updates: one node per chain
    contiguous_loop_weights,  # a loop's transposed weight copied once per call: NN step GEMMs
    eliminate_dead_code,
]

_default: list[Pass] | None = None


def default_passes() -> list[Pass]:
    return list(DEFAULT if _default is None else _default)


def check_passes(passes) -> list[Pass]:
    """`passes` as a list, or an ArgumentTypeError (a TypeError) naming the first entry that is not a callable pass
    (a name string is the common slip: pass the function, e.g. `passes.eliminate_dead_code`)."""
    if isinstance(passes, (str, bytes)) or not hasattr(passes, "__iter__"):
        raise ArgumentTypeError(
            f"a pass list is a list of functions Graph -> Graph, got {type(passes).__name__}"
        )
    passes = list(passes)
    for k, p in enumerate(passes):
        if not callable(p):
            hint = f"; use tapernn.passes.{p}" if isinstance(p, str) and p in __all__ else ""
            raise ArgumentTypeError(
                f"pass {k} is {p!r} ({type(p).__name__}), not a function Graph -> Graph{hint}"
            )
    check_order(passes)
    return passes


def set_default_passes(passes: list[Pass] | None) -> None:
    """Use `passes` wherever no pipeline is given (None restores `DEFAULT`)."""
    global _default
    _default = None if passes is None else check_passes(passes)


__all__ = [
    "DEFAULT",
    "CompileReport",
    "Pass",
    "PassRecord",
    "PlanStats",
    "batch_sliced_elementwise",
    "check_order",
    "contiguous_loop_weights",
    "default_passes",
    "eliminate_common_subexpressions",
    "eliminate_dead_code",
    "feature_major_loops",
    "flip_transposed_products",
    "fold_constants",
    "fuse_elementwise",
    "fuse_gate_matmuls",
    "fuse_gates",
    "fuse_row_sums",
    "hoist_across_time",
    "index_grads_to_concat",
    "merge_column_sums",
    "merge_concatenated_ops",
    "merge_concatenated_ys",
    "merge_gate_xs",
    "merge_matmul_sums_over_time",
    "merge_matmul_sums_within_steps",
    "merge_row_sums",
    "must_follow",
    "propagate_zeros",
    "pull_slices_out_of_sums",
    "pull_transposes_out_of_sums",
    "push_out_of_loops",
    "run_passes",
    "set_default_passes",
    "share_stacks",
    "share_ys_columns",
    "simplify_view_chains",
    "simplify_views",
    "specialize_inputs",
    "split_concat_matmuls",
    "stack_index_grads",
    "stack_matmuls_over_time",
    "sum_within_steps",
    "until_stable",
]
