"""The `scan` loop node's rules and builder (issue 16; Theano's scan, JAX's lax.scan): its shape
and dtype rules, the reference forward (a loop over `interpret(body)`), the slab layout, the
builder `scan(...) -> ScanResult`, `inline` (replay a body into the tape) and `unroll_scans`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import functional as F
from .errors import ArgumentError, ArgumentTypeError, DTypeError, ShapeError, TracingError
from .graph import Graph, Node
from .interpret import interpret
from .tracing import _PHASE, _SCOPE, _STEP, Tape, Var, as_var, current_tape, phase, scope, step

# ---- the slab layout ----------------------------------------------------------------------------


def slab_sizes(body: Graph, n_carry: int) -> tuple[int, int]:
    """(C, Y): the total size of the carry outputs, and of one step's ys."""
    sizes = [math.prod(o.shape) for o in body.outputs]
    return sum(sizes[:n_carry]), sum(sizes[n_carry:])


def offsets(shapes: Sequence[tuple]) -> list[tuple[int, int]]:
    """(start, stop) of each flattened shape laid out one after another."""
    out, start = [], 0
    for s in shapes:
        stop = start + math.prod(s)
        out.append((start, stop))
        start = stop
    return out


def ys_places(
    body: Graph, n_carry: int, length: int, reverse: bool = False, shifted: tuple = ()
) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
    """(slab size, per ys (start, stride): row t at start + t * stride, per shifted pair
    (carry k, offset of its initial value)). The layout: the final carries, then the rows of
    the ys not `shifted`, then per shifted (j, k) (ys j is carry k's new value) ys j's own
    block of length + 1 rows, the initial carry k in its first row (its last when `reverse`):
    the carry entering every step is then the view block[:-1] (block[1:] when `reverse`)."""
    sizes = [math.prod(o.shape) for o in body.outputs]
    c, ys = sum(sizes[:n_carry]), sizes[n_carry:]
    moved = {j for j, _ in shifted}
    width = sum(w for j, w in enumerate(ys) if j not in moved)
    places: list[tuple[int, int]] = [(0, 0)] * len(ys)
    start = c
    for j, w in enumerate(ys):
        if j not in moved:
            places[j] = (start, width)
            start += w
    at = c + length * width
    inits = []
    for j, k in shifted:
        w = ys[j]
        places[j] = (at if reverse else at + w, w)
        inits.append((k, at + length * w if reverse else at))
        at += (length + 1) * w
    return at, places, inits


def scan_rows(node: Any) -> tuple[range, int, int, int] | None:
    """The scan op's `rows` (ops/registry.OpDef): its xs operands, and where the rows of its ys
    that are not `shifted` lie in the slab (start, row, length; scan_ir.ys_places). The runner
    writes step t's row after the step's body has read its xs rows (scan_run.make_runner checks
    the body's order and falls back to a slab of its own when that does not hold)."""
    return scan_rows_of(node.attrs)


def scan_rows_of(a: dict) -> tuple[range, int, int, int] | None:
    """`scan_rows` of a scan node's attrs."""
    body, nc, nx, length = a["body"], a["n_carry"], a["n_xs"], a["length"]
    moved = {j for j, _ in a.get("shifted", ())}
    sizes = [math.prod(o.shape) for o in body.outputs]
    width = sum(w for j, w in enumerate(sizes[nc:]) if j not in moved)
    if not (nx and width and length):
        return None
    return range(nc, nc + nx), sum(sizes[:nc]), width, length


def check_shifted(body: Graph, n_carry: int, shifted: Any) -> None:
    """Raise ShapeError unless every (j, k) of `shifted` pairs a ys with a carry of its shape."""
    n_ys = len(body.outputs) - n_carry
    seen = set()
    for pair in shifted:
        j, k = pair
        if not (0 <= j < n_ys and 0 <= k < n_carry) or j in seen:
            raise ShapeError(
                f"scan: shifted pairs are (ys index, carry index), each ys once, got {pair!r} "
                f"({n_ys} ys, {n_carry} carries)"
            )
        if body.outputs[n_carry + j].shape != body.outputs[k].shape:
            raise ShapeError(
                f"scan: shifted ys {j} {body.outputs[n_carry + j].shape} and carry {k} "
                f"{body.outputs[k].shape} differ in shape"
            )
        seen.add(j)


def body_dtype(body: Graph) -> np.dtype:
    return body.outputs[0].dtype if body.outputs else np.dtype(np.float64)


def check_body(body: Any, n_carry: int, n_xs: int, err: type = ShapeError) -> None:
    """Raise (ShapeError / DTypeError / `err` for mixed dtypes) unless `body` can be scanned."""
    if not isinstance(body, Graph):
        raise ArgumentTypeError(
            f"scan: the body is a Graph (from tn.trace), got {type(body).__name__}"
        )
    if n_carry < 0 or n_xs < 0 or n_carry + n_xs > len(body.inputs):
        raise ShapeError(
            f"scan: the body has {len(body.inputs)} inputs, fewer than its "
            f"{n_carry} carries + {n_xs} xs"
        )
    if len(body.outputs) < n_carry:
        raise ShapeError(
            f"scan: the body returns {len(body.outputs)} values, fewer than its {n_carry} carries"
        )
    dtypes = {o.dtype for o in body.outputs}
    if len(dtypes) > 1 or any(d.kind != "f" for d in dtypes):
        shown = ", ".join(f"{k}: {o.dtype}" for k, o in enumerate(body.outputs))
        if any(d.kind != "f" for d in dtypes):  # (as an op refuses what it does not compute in)
            raise DTypeError(
                f"scan: the body's outputs (carries and ys) must be floats, got {shown}: trace "
                f"the body with float arrays (x.astype(np.float64)); integer xs and "
                f"invariants may meet float carries"
            )
        raise err(
            f"scan: the body's outputs must all have one floating-point dtype (the "
            f"slab's), got {shown}"
        )
    for k in range(n_carry):
        i, o = body.inputs[k], body.outputs[k]
        if i.shape != o.shape or i.dtype != o.dtype:
            raise ShapeError(
                f"scan: carry {k} ({i.name!r}) enters the body as {i.shape} "
                f"{i.dtype} but the body returns it as {o.shape} {o.dtype}"
            )


def _role(k: int, n_carry: int, n_xs: int, body: Graph) -> str:
    name = body.inputs[k].name if k < len(body.inputs) else "?"
    if k < n_carry:
        return f"initial carry {k} (body input {name!r})"
    if k < n_carry + n_xs:
        return f"xs {k - n_carry} (body input {name!r})"
    return f"invariant {k - n_carry - n_xs} (body input {name!r})"


def scan_shape(
    *shapes: tuple,
    body: Graph,
    n_carry: int,
    n_xs: int,
    length: int,
    reverse: bool = False,
    shifted: tuple = (),
) -> tuple[int]:
    """The slab's shape (C + length * Y,, one row more per shifted ys), after checking every
    input against the body."""
    check_body(body, n_carry, n_xs)
    check_shifted(body, n_carry, shifted)
    n_inv = len(body.inputs) - n_carry - n_xs
    if len(shapes) != len(body.inputs):
        raise ShapeError(
            f"scan: the body takes {len(body.inputs)} inputs ({n_carry} carries, "
            f"{n_xs} xs, {n_inv} invariants), got {len(shapes)}"
        )
    if not isinstance(length, (int, np.integer)) or length < 0:
        raise ShapeError(f"scan: length must be a non-negative int, got {length!r}")
    for k, (s, i) in enumerate(zip(shapes, body.inputs)):
        want = (int(length), *i.shape) if n_carry <= k < n_carry + n_xs else i.shape
        if tuple(s) != want:
            raise ShapeError(
                f"scan: {_role(k, n_carry, n_xs, body)}: expected shape {want}, got {tuple(s)}"
            )
    return (ys_places(body, n_carry, int(length), reverse, shifted)[0],)


def scan_dtype(
    *dtypes: np.dtype,
    body: Graph,
    n_carry: int,
    n_xs: int,
    length: int = 0,
    reverse: bool = False,
    shifted: tuple = (),
) -> np.dtype:
    for k, (d, i) in enumerate(zip(dtypes, body.inputs)):
        if np.dtype(d) != i.dtype:
            raise DTypeError(
                f"scan: {_role(k, n_carry, n_xs, body)}: expected dtype "
                f"{i.dtype}, got {np.dtype(d)}"
            )
    return body_dtype(body)


def scan_forward(
    *arrays: np.ndarray,
    out: np.ndarray | None = None,
    body: Graph,
    n_carry: int,
    n_xs: int,
    length: int,
    reverse: bool = False,
    shifted: tuple = (),
) -> np.ndarray:
    """The reference semantics: step t runs `interpret(body)` on the carries and xs[t] (t from
    length - 1 down to 0 when `reverse`), ys row t holds step t's ys; then the final carries
    (laid out by `ys_places`: a shifted ys's block holds the initial carry too)."""
    carries = list(arrays[:n_carry])
    xs, inv = arrays[n_carry : n_carry + n_xs], arrays[n_carry + n_xs :]
    c = slab_sizes(body, n_carry)[0]
    size, places, inits = ys_places(body, n_carry, length, reverse, shifted)
    slab = np.empty(size, body_dtype(body))
    for k, at in inits:
        slab[at : at + carries[k].size] = np.ravel(carries[k])
    for t in range(length - 1, -1, -1) if reverse else range(length):
        outs = interpret(body, *carries, *[x[t] for x in xs], *inv)
        carries = outs[:n_carry]
        for (start, stride), o in zip(places, outs[n_carry:]):
            slab[start + t * stride : start + t * stride + np.size(o)] = np.ravel(o)
    if c:
        slab[:c] = np.concatenate([np.ravel(v) for v in carries])
    if out is not None:
        np.copyto(out, slab)
        return out
    return slab


# ---- the builder --------------------------------------------------------------------------------


class ScanResult:
    """What `scan` returns: `node` (the slab), `carries` (final carries) and `ys` (each
    (length, *shape)): views of the slab (getitem + reshape); `previous[j]` for a shifted ys j:
    the (length, *shape) view of the carry entering each step."""

    def __init__(
        self,
        slab: Var,
        body: Graph,
        n_carry: int,
        length: int,
        reverse: bool = False,
        shifted: tuple = (),
    ):
        self.slab, self.body, self.n_carry, self.length = slab, body, n_carry, length
        c, _ = slab_sizes(body, n_carry)
        carry_shapes = [o.shape for o in body.outputs[:n_carry]]
        self.carries = [
            F.reshape(F.getitem(slab, slice(a, b)), s)
            for (a, b), s in zip(offsets(carry_shapes), carry_shapes)
        ]
        y_shapes = [o.shape for o in body.outputs[n_carry:]]
        moved = {j for j, _ in shifted}
        kept = [s for j, s in enumerate(y_shapes) if j not in moved]
        y = sum(math.prod(s) for s in kept)
        self.ys: list[Var] = [None] * len(y_shapes)  # type: ignore[list-item]
        self.previous: dict[int, Var] = {}
        if kept:
            rows = F.reshape(F.getitem(slab, slice(c, c + length * y)), (length, y))
            at = iter(offsets(kept))
            for j, s in enumerate(y_shapes):
                if j in moved:
                    continue
                a, b = next(at)
                block = rows if (a, b) == (0, y) else F.getitem(rows, (slice(None), slice(a, b)))
                self.ys[j] = F.reshape(block, (length, *s))
        _, places, _ = ys_places(body, n_carry, length, reverse, shifted)
        for j, k in shifted:
            s, w = y_shapes[j], math.prod(y_shapes[j])
            first = places[j][0] - (0 if reverse else w)
            block = F.reshape(F.getitem(slab, slice(first, first + (length + 1) * w)), (-1, *s))
            self.ys[j] = block[:length] if reverse else block[1:]
            self.previous[j] = block[1:] if reverse else block[:length]
            # the final carry k read from its block's last row (the same value as the slab's
            # carry section): that section may then be overwritten by a backward that is
            # given the slab (PlanOptions.dz_in_gates) while the final states stay right
            end = 0 if reverse else length
            self.carries[k] = F.reshape(
                F.getitem(slab, slice(first + end * w, first + (end + 1) * w)), s
            )

    @property
    def node(self) -> Node:
        return self.slab.node

    def __repr__(self) -> str:
        return f"ScanResult({len(self.carries)} carries, {len(self.ys)} ys, length {self.length})"


def _vars(label: str, values: Any) -> list[Var]:
    if isinstance(values, (Var, np.ndarray)) or hasattr(values, "__tapernn_var__"):
        raise ArgumentTypeError(
            f"scan: {label} is a list of Vars, got one {type(values).__name__} (wrap it in a list)"
        )
    try:
        return [as_var(v) for v in values]
    except TypeError:
        raise ArgumentTypeError(
            f"scan: {label} is a list of Vars, got {type(values).__name__}"
        ) from None


def scan(
    body: Graph,
    inits: Sequence[Var],
    xs: Sequence[Var] = (),
    invariants: Sequence[Var] = (),
    reverse: bool = False,
    length: int | None = None,
    shifted: tuple = (),
) -> ScanResult:
    """Run `body` as a loop: `body(carries, xs[t], invariants) -> (new carries, ys)` for t in
    range(length) (reversed with `reverse`); the Torch7 counterpart is a Recurrence stepped over
    a sequence. `length` is xs[0].shape[0]; give it when there are no xs. The body is compiled
    once, whatever the length (tapernn/scan_run.py). `shifted`: (ys j, carry k) pairs, ys j
    being carry k's new value, stored as one block with the initial carry (`ys_places`), so
    that `.previous[j]`, the carry entering each step, is a view."""
    inits, xs, invariants = (
        _vars("inits", inits),
        _vars("xs", xs),
        _vars("invariants", invariants),
    )
    n_carry, n_xs = len(inits), len(xs)
    check_body(body, n_carry, n_xs, err=TracingError)
    body.verify()
    given = n_carry + n_xs + len(invariants)
    if given != len(body.inputs):
        raise ShapeError(
            f"scan: the body takes {len(body.inputs)} inputs, got {n_carry} "
            f"carries + {n_xs} xs + {len(invariants)} invariants = {given}"
        )
    if xs:
        for k, x in enumerate(xs):
            if x.ndim == 0:
                raise ShapeError(f"scan: xs {k} is 0-d; xs are stacked over time (length, ...)")
        lengths = [x.shape[0] for x in xs]
        if len(set(lengths)) > 1:
            raise ShapeError(f"scan: every xs has the same length (axis 0), got {lengths}")
        if length is not None and length != lengths[0]:
            raise ShapeError(f"scan: length={length} but the xs have length {lengths[0]}")
        length = lengths[0]
    elif length is None:
        raise ArgumentError("scan: with no xs, give the number of steps as length=")
    if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 0:
        raise ArgumentError(f"scan: length is a non-negative int, got {length!r}")
    slab = F.emit(
        "scan",
        *inits,
        *xs,
        *invariants,
        body=body,
        n_carry=n_carry,
        n_xs=n_xs,
        length=int(length),
        reverse=bool(reverse),
        **({"shifted": tuple(shifted)} if shifted else {}),
    )
    return ScanResult(slab, body, n_carry, int(length), bool(reverse), tuple(shifted))


def inline(body: Graph, inputs: Sequence[Var], step: int | None = None) -> list[Var]:
    """Replay `body`'s nodes into the tape being recorded with its inputs bound to `inputs`;
    returns its outputs. Nodes keep op and attrs; their step is `step`, else the current one
    (tracing.step), else their own; their scope their own, else the current one."""
    inputs = _vars("inline inputs", inputs)
    if len(inputs) != len(body.inputs):
        raise ShapeError(f"inline: the body takes {len(body.inputs)} inputs, got {len(inputs)}")
    for k, (v, i) in enumerate(zip(inputs, body.inputs)):
        if v.shape != i.shape or v.dtype != i.dtype:
            raise ShapeError(
                f"inline: input {k} ({i.name!r}): expected {i.shape} {i.dtype}, "
                f"got {v.shape} {v.dtype}"
            )
    tape = inputs[0].tape if inputs else current_tape()
    st = step if step is not None else _STEP.get()
    here, ph = _SCOPE.get(), _PHASE.get()
    env: dict[Node, Node] = {i: v.node for i, v in zip(body.inputs, inputs)}
    for n in body.nodes:
        if n.op == "input":
            continue
        new = Node(
            n.op,
            [env[i] for i in n.inputs],
            n.attrs,
            n.shape,
            n.dtype,
            step=n.step if st is None else st,
            scope=n.scope or here,
            phase=n.phase if n.phase != "forward" else ph,
            name=n.name,
            value=n.value,
        )
        new.verified = n.verified
        env[n] = tape.add(new)
    return [Var(env[o], tape) for o in body.outputs]


def unroll_scans(graph: Graph) -> Graph:
    """`graph` with every scan replaced by its steps (`inline`d, each tagged with its step;
    nested scans too) and the slab by a concat of the final carries and the ys: the unrolled
    view of a rolled graph (printing, diagrams, `tn.compile(..., unroll=True)`)."""
    if not any(n.op == "scan" for n in graph.nodes):
        return graph
    tape = Tape(Graph([], list(graph.inputs), [], graph.meta))
    env: dict[Node, Node] = {}
    with tape.recording():
        for n in graph.nodes:
            ins = tuple(env.get(i, i) for i in n.inputs)
            if n.op == "scan":
                env[n] = _unrolled(n, [Var(i, tape) for i in ins], tape)
            else:
                env[n] = tape.add(n if ins == n.inputs else n.with_inputs(ins))
    tape.graph.outputs = [env.get(o, o) for o in graph.outputs]
    return tape.graph


def _unrolled(n: Node, ins: list[Var], tape: Tape) -> Node:
    a = n.attrs
    body, nc, nx, length = unroll_scans(a["body"]), a["n_carry"], a["n_xs"], a["length"]
    carries, xs, inv = ins[:nc], ins[nc : nc + nx], ins[nc + nx :]
    ys: dict[int, list[Var]] = {}
    with scope(n.scope, absolute=True), phase(n.phase):
        for t in range(length - 1, -1, -1) if a["reverse"] else range(length):
            with step(t):
                outs = inline(body, carries + [F.getitem(x, t) for x in xs] + inv, step=t)
            carries, ys[t] = outs[:nc], outs[nc:]
        moved = dict(a.get("shifted", ()))
        pieces = [F.reshape(v, (-1,)) for v in carries]
        pieces += [
            F.reshape(v, (-1,))
            for t in range(length)
            for j, v in enumerate(ys[t])
            if j not in moved
        ]
        for j, k in a.get("shifted", ()):  # ys j's block: the initial carry k first (last)
            block = [ys[t][j] for t in range(length)]
            block = block + [ins[k]] if a["reverse"] else [ins[k], *block]
            pieces += [F.reshape(v, (-1,)) for v in block]
        if not pieces or n.shape == (0,):
            return tape.add(
                Node(
                    "zeros",
                    (),
                    {"shape": (0,), "dtype": n.dtype.str},
                    (0,),
                    n.dtype,
                    scope=n.scope,
                    phase=n.phase,
                )
            )
        return F.concat(pieces).node
