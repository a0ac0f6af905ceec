"""Recording: `Var` (a symbolic value with NumPy-style operators), the recording context
(current step, scope and phase) and `trace`, which turns a Python function into a `Graph`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import DTypeError, ShapeError, TracingError, where
from .graph import Graph, Node
from .ops.registry import get_op
from .validation import data_array

_STEP: ContextVar[int | None] = ContextVar("tapernn_step", default=None)
_SCOPE: ContextVar[str] = ContextVar("tapernn_scope", default="")
_PHASE: ContextVar[str] = ContextVar("tapernn_phase", default="forward")
_TAPE: ContextVar[Tape | None] = ContextVar("tapernn_tape", default=None)
# inside a module's build (nn.context.BuildContext): float array constants and NumPy scalars are
# weakly typed as Python scalars are, so a cell's np.array constant runs in the model's float32
_WEAK_ARRAYS: ContextVar[bool] = ContextVar("tapernn_weak_arrays", default=False)


class step:
    """`with step(t):` tags every node recorded inside with timestep `t`.

    (A class rather than a generator context manager: autodiff enters one per node, and the
    generator machinery cost several percent of `grad`.)"""

    __slots__ = ("t", "token")

    def __init__(self, t: int | None):
        self.t = t

    def __enter__(self) -> None:
        self.token = _STEP.set(self.t)

    def __exit__(self, *exc: object) -> None:
        _STEP.reset(self.token)


class scope:
    """`with scope(name):` tags nodes with a dotted scope; nested scopes join with '.' unless
    `absolute`."""

    __slots__ = ("absolute", "name", "token")

    def __init__(self, name: str, absolute: bool = False):
        self.name, self.absolute = name, absolute

    def __enter__(self) -> None:
        outer = _SCOPE.get()
        name = self.name
        full = name if self.absolute or not outer else (f"{outer}.{name}" if name else outer)
        self.token = _SCOPE.set(full)

    def __exit__(self, *exc: object) -> None:
        _SCOPE.reset(self.token)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    token = _PHASE.set(name)
    try:
        yield
    finally:
        _PHASE.reset(token)


def current_step() -> int | None:
    return _STEP.get()


def current_scope() -> str:
    return _SCOPE.get()


class Tape:
    """The graph being recorded. Ops on Vars of one tape append nodes to it."""

    def __init__(self, graph: Graph | None = None):
        self.graph = graph if graph is not None else Graph()
        # node -> Var: nodes `grad` rewires to another value once the sweep is done (a scan's
        # VJP replaces the forward loop by its extension that also writes the residuals)
        self.replacements: dict[Node, Var] = {}

    def add(self, node: Node) -> Node:
        self.graph.nodes.append(node)
        return node

    def input(
        self,
        shape: Sequence[int],
        dtype: Any = np.float64,
        name: str | None = None,
        kind: str = "data",
    ) -> Var:
        name = name or f"x{len(self.graph.inputs)}"
        node = Node(
            "input",
            (),
            {"kind": kind},
            tuple(shape),
            dtype,
            step=_STEP.get(),
            scope=_SCOPE.get(),
            phase=_PHASE.get(),
            name=name,
        )
        self.graph.inputs.append(node)
        return Var(self.add(node), self)

    def constant(self, value: Any, dtype: Any = None) -> Var:
        """A constant node holding a read-only copy of `value` as it is now: an ndarray the
        traced function captured and the caller changes later must not be read live by some
        programs (`a @ w` took w at run time) and folded at compile time by others (`a @
        tn.tanh(w)` kept its old value) -- a graph is a snapshot, as in JAX."""
        arr = np.array(value, dtype=dtype, copy=True)
        arr.flags.writeable = False
        node = Node(
            "constant",
            (),
            {},
            arr.shape,
            arr.dtype,
            step=_STEP.get(),
            scope=_SCOPE.get(),
            phase=_PHASE.get(),
            value=arr,
        )
        return Var(self.add(node), self)

    @contextlib.contextmanager
    def recording(self) -> Iterator[Tape]:
        token = _TAPE.set(self)
        try:
            yield self
        finally:
            _TAPE.reset(token)


def current_tape() -> Tape:
    tape = _TAPE.get()
    if tape is None:
        raise TracingError(
            "no graph is being recorded: tn.* functions take symbolic values, inside tn.trace or a "
            "module's build / step (on NumPy arrays outside them use NumPy's functions)"
        )
    return tape


class Var:
    """A symbolic array: shape, dtype and the node that computes it. Its NumPy-style operators
    and methods (`+`, `@`, `x[i]`, `.sum()`, `.T`, ...) and its answers to NumPy functions are
    those of `tapernn.functional`, attached there (the layer above this one)."""

    __slots__ = ("node", "tape")
    __array_priority__ = 1000  # ndarray (op) Var defers to Var's reflected operators

    def __init__(self, node: Node, tape: Tape):
        self.node = node
        self.tape = tape

    shape = property(lambda self: self.node.shape)
    dtype = property(lambda self: self.node.dtype)
    ndim = property(lambda self: len(self.node.shape))
    size = property(lambda self: self.node.size)

    def __len__(self) -> int:
        if not self.node.shape:
            raise TracingError("len() of a 0-d Var")
        return self.node.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TracingError(
            "a symbolic tn.Var has no values while a graph is recorded (inside a "
            "cell's step, a module's build or a traced function): use the tn.* "
            f"ops on it, not NumPy{where(_SCOPE.get() or None, _STEP.get())}"
        )

    def __repr__(self) -> str:
        return f"Var({self.node.op}, shape={self.shape}, dtype={self.dtype})"

    def __bool__(self) -> bool:
        raise TracingError(
            "a symbolic Var has no truth value; use tn.where for data-dependent choices"
        )

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def __float__(self) -> float:  # (also int(), complex(): Python's TypeError said nothing)
        raise TracingError(
            "a symbolic Var has no value to convert to a Python number while a graph is "
            f"recorded: keep it a Var and use the tn.* ops{where(_SCOPE.get() or None, _STEP.get())}"
        )

    __int__ = __complex__ = __float__


def emit(opname: str, *args: Any, **attrs: Any) -> Var:
    """Record one application of a registered op; Python scalars and ndarrays become constants.

    Scalars are weakly typed: they take the dtype of the Var they meet, so `x32 * 0.5` stays
    float32. The shape rule runs now, so a mismatch raises ShapeError naming op, shapes and scope.
    """
    op = get_op(opname)
    for a in args:
        if type(a) is not Var:
            tape, nodes = _operand_nodes(opname, args)
            break
    else:  # the usual case (and all of autodiff): Vars of one tape, nothing to convert
        if args:
            tape = args[0].tape
            for a in args:
                if a.tape is not tape:
                    raise TracingError(f"{opname}: operands were recorded in different graphs")
            nodes = [a.node for a in args]
        else:
            tape, nodes = current_tape(), []
    shapes = [n.shape for n in nodes]
    try:
        shape = tuple(op.shape(*shapes, **attrs))
        dtype = op.infer_dtype([n.dtype for n in nodes], attrs)
    except (ShapeError, DTypeError) as e:
        shown = ", ".join(map(str, shapes))
        said = str(e) if str(e).startswith(f"{opname}: ") else f"{opname}: {e}"  # (scan's do)
        raise type(e)(
            f"{said} [input shapes {shown}]{where(_SCOPE.get() or None, _STEP.get())}"
        ) from None
    node = Node(
        opname, nodes, attrs, shape, dtype, step=_STEP.get(), scope=_SCOPE.get(), phase=_PHASE.get()
    )
    node.verified = op.n_inputs is None or len(nodes) == op.n_inputs  # rules ran just above
    return Var(tape.add(node), tape)


def _operand_nodes(opname: str, args: tuple) -> tuple[Tape, list[Node]]:
    """emit's general case: Parameters, Python scalars and arrays among the operands."""
    args = tuple(a.__tapernn_var__() if hasattr(a, "__tapernn_var__") else a for a in args)
    tape = next((a.tape for a in args if isinstance(a, Var)), None) or current_tape()
    for a in args:
        if isinstance(a, Var) and a.tape is not tape:
            raise TracingError(f"{opname}: operands were recorded in different graphs")
    ref = next(
        (a.dtype for a in args if isinstance(a, Var) and a.dtype.kind == "f"),
        next((a.dtype for a in args if isinstance(a, Var)), np.dtype(np.float64)),
    )
    try:
        return tape, [_as_node(a, tape, ref) for a in args]
    except DTypeError as e:  # (a scalar beyond the integer dtype it meets)
        raise DTypeError(f"{opname}: {e}{where(_SCOPE.get() or None, _STEP.get())}") from None


def _as_node(a: Any, tape: Tape, ref: np.dtype) -> Node:
    if isinstance(a, Var):
        return a.node
    if hasattr(a, "__tapernn_var__"):  # a Parameter inside a module's build
        return a.__tapernn_var__().node
    if isinstance(a, bool):
        return tape.constant(a, np.bool_).node
    weak = _WEAK_ARRAYS.get()
    if weak and isinstance(a, (np.integer, np.floating)):
        a = a.item()  # (np.int64(2) * x32 is float64 under NumPy 2; 2 * x32 is float32)
    if isinstance(a, (int, float)):
        if ref.kind in "iu" and isinstance(a, int) and not _fits(a, ref):
            raise DTypeError(  # (NumPy 2's OverflowError for x_uint8 * -1, said by the op)
                f"the Python int {a} does not fit {ref} (a scalar takes the dtype of the "
                f"integer value it meets, as in NumPy 2); convert that value first: "
                f"x.astype(np.{np.promote_types(ref, np.min_scalar_type(a)).name}) for an "
                f"input array, tn.cast(v, ...) for a traced value"
            )
        if ref.kind == "f" or (ref.kind in "iu" and isinstance(a, int)):
            return tape.constant(a, ref).node
        return tape.constant(a, np.float64 if isinstance(a, float) else np.int64).node
    if isinstance(a, (np.ndarray, np.generic)):
        arr = np.asarray(a)
        if weak and arr.dtype.kind == "f" and ref.kind == "f":
            return tape.constant(arr, ref).node  # (integer arrays stay: they may be ids)
        return tape.constant(arr).node
    raise TracingError(f"cannot use {type(a).__name__} as an operand of a symbolic op")


def _fits(a: int, dtype: np.dtype) -> bool:
    info = np.iinfo(dtype)
    return info.min <= a <= info.max


def as_var(a: Any, like: Var | None = None) -> Var:
    if isinstance(a, Var):
        return a
    if hasattr(a, "__tapernn_var__"):
        return a.__tapernn_var__()
    tape = like.tape if like is not None else current_tape()
    ref = like.dtype if like is not None else np.dtype(np.float64)
    return Var(_as_node(a, tape, ref), tape)


def _flatten(out: Any) -> list[Var]:
    if isinstance(out, Var):
        return [out]
    if isinstance(out, (list, tuple)):
        return [v for o in out for v in _flatten(o)]
    raise TracingError(
        f"traced functions must return Vars (or nested lists/tuples of them), got "
        f"{type(out).__name__}"
    )


def trace(
    fn: Callable[..., Any], *example_arrays: Any, names: Sequence[str] | None = None
) -> Graph:
    """Record `fn` applied to symbolic inputs shaped like `example_arrays` into a Graph.

    Shapes: each example array fixes the shape and dtype of one input; `fn` returns a Var or a
    (nested) list/tuple of Vars, which become `graph.outputs` in order.
    """
    if not callable(fn):
        raise TracingError(f"tn.trace takes a function of Vars first, got {type(fn).__name__}")
    tape = Tape()
    with tape.recording():
        ins = []
        for k, a in enumerate(example_arrays):
            try:
                arr = np.asarray(a)
            except ValueError:  # (numpy: lists of unequal lengths make no array)
                raise ShapeError(
                    f"tn.trace: example array {k} is ragged (lists of unequal lengths); "
                    f"expected one array per input"
                ) from None
            arr = data_array("tn.trace", arr)
            name = names[k] if names is not None else f"x{k}"
            ins.append(tape.input(arr.shape, arr.dtype, name=name))
        out = fn(*ins)
        outs = _flatten(out)
    tape.graph.outputs = [v.node for v in outs]
    tape.graph.meta = replace(tape.graph.meta, single_output=isinstance(out, Var))
    return tape.graph
