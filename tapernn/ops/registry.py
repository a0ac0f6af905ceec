"""The op registry: one `OpDef` per op, holding its shape rule, NumPy forward, VJP and flags.

An op is registered once, in its family file (elementwise, reduce, shape, linalg, nn); tracing,
autodiff, the passes and the executor all look ops up here by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ..errors import DTypeError, ShapeError

Shape = tuple[int, ...]

PSEUDO = ("input", "constant")  # graph nodes that are no op application


# When an op's result is known to be zero from which operands are (passes/zeros.py):
#   "first": when input 0 is (f(0, ...) == 0: tanh, sum, reshape, div, ...)
#   "any": when any input is (mul, matmul)      "all": when every input is (concat)
#   "branches": when inputs 1 and 2 are (where)  "sum": zero terms drop out (add, add_n)
#   "difference": a - 0 == a, 0 - b == -b (sub)  "": never assumed
ZeroRule = Literal["", "first", "any", "all", "branches", "sum", "difference"]


class Lowering(Protocol):
    """An op's own line of generated NumPy source: `lower(args, attrs, out, bind) -> str`, the
    call expression (writing `out` when it is given). `bind(prefix, value) -> name` makes a value
    available to the program under a fresh name; `bind(name, value, fixed=True)` under `name`."""

    def __call__(
        self, args: list[str], attrs: dict, out: str | None, bind: Callable[..., str]
    ) -> str: ...


@dataclass(frozen=True)
class OpDef:
    """Everything the system knows about one op: tracing, autodiff, every pass, the planner, the
    code generator and the diagrams ask an op's OpDef, never a table of op names.

    forward(*arrays, out=None, **attrs) -> ndarray        (out only if `supports_out`)
    shape(*input_shapes, **attrs) -> Shape               (raises ShapeError)
    dtype(*input_dtypes, **attrs) -> np.dtype            (default: NumPy promotion)
    kinds: the dtype kinds (np.dtype.kind) the op computes in, checked on the promoted dtype of
        its operands by the default dtype rule (`refuse_kind`): "f" for a float-only op, "fiu"
        for arithmetic NumPy has no bool form of. See `refuse_kind` for why not NumPy's dtype.
    vjp(g, y, *inputs, wants=(bool, ...), **attrs) -> tuple[Var | None, ...]
        g is the cotangent of the output y; inputs and y are Vars; returns one cotangent (or None)
        per input, computing only those with wants[k] true.
    elementwise: applied per element after broadcasting, so fusible into one kernel with its
        neighbours (when it also `supports_out`) and batchable over adjacent column blocks.
    inplace / inplace_rule(node): the inputs the output may overwrite (the rule, when given,
        decides per node). view: the output may alias input 0 (reshape, transpose, slicing).
    layout: only re-lays out its input (no arithmetic): a layout of a loop-level value (a
        weight) is loop-level too. zero: see ZeroRule.
    ufunc: a NumPy function the code generator calls directly, `ufunc(*args, out=out)` (no
        wrapper frame); lower: the op's own line of source (Lowering); else `forward` is called.
    n_inputs: None for variadic ops. internal: made by the compiler only (not traced).
    rows(node) -> (operand positions, start, row, length) | None: a loop whose flat result
        holds `length` rows of `row` elements from `start`, row t written at step t after the
        step has read row t of the listed operands and nothing of later rows: a value feeding
        those operands may be computed straight into the rows (the planner's `xs_in_slab`).
        Steps run in reverse (t from length - 1 down) when node.attrs["reverse"]: see
        `rows_writable` for where an operand's rows may then lie.
    """

    name: str
    forward: Callable[..., np.ndarray]
    shape: Callable[..., Shape]
    vjp: Callable[..., tuple] | None
    dtype: Callable[..., np.dtype] | None = None
    kinds: str = "fiub"
    elementwise: bool = False
    inplace: tuple[int, ...] = ()
    inplace_rule: Callable[[Any], tuple[int, ...]] | None = None
    view: bool = False
    layout: bool = False
    zero: ZeroRule = ""
    supports_out: bool = True
    ufunc: Callable[..., np.ndarray] | None = None
    lower: Lowering | None = None
    n_inputs: int | None = None
    differentiable: bool = True
    internal: bool = False
    rows: Callable[[Any], tuple[range, int, int, int] | None] | None = None

    @property
    def fusible(self) -> bool:
        """Runs inside a fused elementwise kernel (which writes every result with `out=`)."""
        return self.elementwise and self.supports_out

    @property
    def batchable(self) -> bool:
        """op(concat of column blocks) == concat of op(block): true of any elementwise op."""
        return self.elementwise

    def inplace_inputs(self, node: Any) -> tuple[int, ...]:
        return tuple(self.inplace_rule(node)) if self.inplace_rule is not None else self.inplace

    def infer_dtype(self, dtypes: list[np.dtype], attrs: dict) -> np.dtype:
        if self.dtype is not None:
            return np.dtype(self.dtype(*dtypes, **attrs))
        if not dtypes:
            return np.dtype(np.float64)
        key = tuple(dtypes)
        out = _PROMOTED.get(key)
        if out is None:  # result_type is pure, and called for every traced or derived node
            out = _PROMOTED[key] = np.result_type(*dtypes)
        if out.kind not in self.kinds:
            refuse_kind(self.name, self.kinds, dtypes)
        return out


def refuse_kind(op: str, kinds: str, dtypes: list[np.dtype]) -> None:
    """Raise the DTypeError of `op` given operands (`dtypes`) of a kind it does not compute in.

    Float-only ops (tanh, exp, softmax, true division, ...) refuse integer and bool operands
    rather than compute what NumPy does: NumPy's float for an integer is as narrow as the
    integer allows (tanh of int8 is float16, of int16 float32: a trap), and a node recording
    NumPy's choice would still disagree with the numba kernels and the passes, which compute in
    the node's dtype. PyTorch and JAX promote to their default float instead; tapernn asks for
    the one explicit cast (Torch7, whose math of IntTensors had no tanh, refused too). Bool
    operands of arithmetic NumPy has no bool form of (`-`, sign, relu, `**`) are refused alike.
    """
    given = ", ".join(str(d) for d in dtypes)
    fix = "x.astype(np.float64) for an input array, tn.cast(v, np.float64) for a traced value"
    if kinds == "f":
        raise DTypeError(
            f"takes floating-point operands, got {given}; convert to floats first: {fix}"
        )
    raise DTypeError(
        f"takes numbers, got {given} (NumPy's {op} of bools fails or leaves bool); convert "
        f"first: {fix} (or select with tn.where(mask, a, b))"
    )


REGISTRY: dict[str, OpDef] = {}
_PROMOTED: dict[tuple, np.dtype] = {}


def register(name: str, **kwargs: Any) -> OpDef:
    if name in REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    op = OpDef(name=name, **kwargs)
    REGISTRY[name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered: {sorted(REGISTRY)}") from None


# ---- shape rules shared by several families -------------------------------------------------


def broadcast_shape(*shapes: Shape, **_: Any) -> Shape:
    if len(shapes) == 2 and shapes[0] == shapes[1]:  # the usual case, without NumPy's help
        return tuple(shapes[0])
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"shapes {', '.join(map(str, shapes))} do not broadcast") from None


def same_shape(x: Shape, **_: Any) -> Shape:
    return tuple(x)


def normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise ShapeError(f"axis {axis} out of range for {ndim}-d input")
    return axis % ndim if ndim else 0


def normalize_axes(axis: int | tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    axes = tuple(sorted({normalize_axis(a, ndim) for a in axis}))
    return axes


def rows_writable(lo, end, ts, start: int, row: int, length: int, reverse: bool) -> bool:
    """Whether a loop with `rows` (start, row, length) may write its rows over an operand whose
    row ts[i] spans [lo[i], end[i]) (elements, or bytes with start and row in bytes too): no
    step's row write reaches the operand's rows of the steps still to come (steps in order, t
    descending when `reverse`). Forward: row t at or past the start of row t (the rows written
    before it lie below) and all of it before the rows' end (past them: the shifted blocks,
    written every step). Reverse: row t ending by the end of row t (the rows written before
    it lie above); below the rows lie the final carries, written after the last step, or
    memory the loop does not write. Row t inside row t satisfies both. That step t's own row is
    read before it is written is the loop's part (scan_run.reads_xs_first). lo, end, ts:
    equal-length integer sequences; the bounds being linear in t (a strided view), its first
    and last row suffice."""
    lo, end, ts = (np.asarray(v, dtype=np.int64) for v in (lo, end, ts))
    if lo.size == 0:
        return False
    if reverse:
        return bool((end <= start + (ts + 1) * row).all())
    return bool((lo >= start + ts * row).all() and (end <= start + length * row).all())
