"""The VJP of `scan`: the reverse scan of the body's VJP (JAX's scan transpose, Theano's grad of
Scan). The values the body's backward reads are written per step by a forward scan over the body
extended with them as extra ys, which replaces the original loop (`grad` rewires its readers:
the forward runs once); parameter cotangents are carries of the reverse loop, summed."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from . import functional as F
from .autodiff import _backward_graph, _needed, grad, saved_split
from .errors import TapernnError
from .graph import Graph, Node
from .ops.registry import get_op
from .passes.rewrite import derive
from .passes.slab import slice_bounds
from .scan_ir import ScanResult, body_dtype, inline, offsets, scan, slab_sizes
from .tracing import Var, phase, trace


def scan_vjp(
    g: Var,
    y: Var,
    *inputs: Var,
    wants: tuple[bool, ...],
    body: Graph,
    n_carry: int,
    n_xs: int,
    length: int,
    reverse: bool = False,
    shifted: tuple = (),
) -> tuple[Var | None, ...]:
    """The scan op's VJP: an extended forward scan (replacing the original one) and the
    reverse scan of the body's VJP. A carry the backward reads whose new value is a ys (an
    LSTM's h and c) is a shifted ys of the extended scan: the stack of the carries entering
    the steps is a view of its block (scan_ir.ys_places), not a concat."""
    if shifted:
        raise TapernnError(
            "scan: differentiating a scan with shifted state blocks (a VJP's own forward loop, "
            "made by grad) is not supported; differentiate the original graph again instead"
        )
    nc, nx = n_carry, n_xs
    wrt = tuple(
        k for k, i in enumerate(body.inputs) if i.dtype.kind == "f" and (k < nc or wants[k])
    )
    plan = body_vjp(body, nc, nx, wrt)
    dtype = body_dtype(body)
    pairs = dict(src[1:] for src in plan.res_from_ys if src is not None and src[0] == "prev")
    with phase("forward"):
        ext = scan(
            plan.fwd,
            inputs[:nc],
            inputs[nc : nc + nx],
            inputs[nc + nx :],
            reverse=reverse,
            length=length,
            shifted=tuple(pairs.items()) if length else (),
        )
        _rewire(y, ext, body, nc, length)
    own = iter(_own_residuals(ext.ys[len(body.outputs) - nc :], plan))
    res = [
        next(own)
        if src is None
        else ext.ys[src[1]]
        if src[0] == "ys"
        else ext.previous.get(src[1], ext.ys[src[1]])  # (length 0: an empty stack)
        for src in plan.res_from_ys
    ]
    cot = ScanResult(g, body, nc, length)
    acc = [F.zeros(body.inputs[k].shape, dtype) for k in plan.wrt_inv]
    back = scan(
        plan.bwd,
        cot.carries + acc,
        cot.ys + res + [inputs[k] for k in plan.xs_read],
        [inputs[k] for k in plan.inv_read],
        reverse=not reverse,
        length=length,
    )
    out: list[Var | None] = [None] * len(inputs)
    for k in range(nc):
        out[k] = back.carries[k] if wants[k] else None
    for j, k in enumerate(plan.wrt_inv):
        out[k] = back.carries[nc + j]
    for j, k in enumerate(plan.wrt_xs):
        out[k] = back.ys[j]
    return tuple(out)


def _rewire(y: Var, ext: ScanResult, body: Graph, nc: int, length: int) -> None:
    """Have `grad` replace the original loop's slab by the extended one's: its final-carry
    slices and its ys (the (length, Y) rows block's column views, or the whole block) by views
    of the extended slab, anything else reading the slab by a copy (a concat of the carries
    and the ys columns)."""
    s, e = y.node, ext.slab
    c, width = slab_sizes(body, nc)
    y_shapes = [o.shape for o in body.outputs[nc:]]
    flat = [F.reshape(ext.ys[j], (length, math.prod(sh))) for j, sh in enumerate(y_shapes)]
    rows = (F.concat(flat, axis=1) if len(flat) > 1 else flat[0]) if flat else None
    pieces = ([F.getitem(e, slice(0, c))] if c else []) + (
        [F.reshape(rows, (length * width,))] if length * width else []
    )
    repl = y.tape.replacements
    repl[s] = F.concat(pieces) if pieces else F.zeros((0,), e.dtype)
    users: dict[Node, list[Node]] = {}
    for n in y.tape.graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    spans = {ab: j for j, ab in enumerate(offsets(y_shapes))}
    carry_at = {ab: k for k, ab in enumerate(offsets([o.shape for o in body.outputs[:nc]]))}
    for u in users.get(s, ()):
        ab = slice_bounds(u)
        if ab is None:
            continue
        a, b = ab
        k = carry_at.get((a, b))
        if k is not None:
            # one final carry: as ScanResult.carries reads it (a shifted one from its block's
            # last row, so the slab's carry section is read by nothing: dz_in_gates)
            repl[u] = F.reshape(ext.carries[k], (b - a,))
        elif 0 <= a <= b <= c:
            repl[u] = F.getitem(e, slice(a, b))
        elif a == c and b == c + length * width and width:
            for w in users.get(u, ()):
                if w.op == "reshape" and w.shape == (length, width):
                    _rewire_rows(w, users, flat, y_shapes, spans, ext, repl)


def _rewire_rows(w, users, flat, y_shapes, spans, ext, repl) -> None:
    """The readers of the original (length, Y) rows block `w`: a ys's columns, or the block
    reshaped as the only ys, by the extended slab's view of that ys."""
    for u in users.get(w, ()):
        key = u.attrs.get("index") if u.op == "getitem" else None
        cols = key[1] if key and len(key) == 2 and isinstance(key[1], tuple) else None
        full = key and key[0] == ("s", None, None, None)
        if full and cols and cols[0] == "s" and cols[3] in (None, 1) and cols[1:3] in spans:
            repl[u] = flat[spans[cols[1:3]]]
        elif u.op == "reshape" and len(y_shapes) == 1 and u.shape == (w.shape[0], *y_shapes[0]):
            repl[u] = ext.ys[0]


@dataclass(frozen=True)
class BodyVJP:
    """The two bodies of a scan's VJP, made once per (body, differentiated inputs).

    fwd: the body with extra ys, the residuals (values its backward reads, per step).
    bwd: (carry cotangents, accumulators) + (ys cotangents, residuals, xs read) + (invariants
    read) -> (previous carry cotangents, accumulators + this step's) + (xs cotangents).
    """

    fwd: Graph
    bwd: Graph
    n_res: int  # residual ys of fwd (after the body's own ys)
    # per residual: ("ys", j) a body ys it equals, ("prev", j, k) carry k's input = ys j of the
    # step before (the initial carry at the first step), or None (written as an own ys)
    res_from_ys: tuple
    xs_read: tuple[int, ...]  # body input positions of the xs the backward reads
    inv_read: tuple[int, ...]  # ... and of the invariants
    wrt_xs: tuple[int, ...]  # body input positions of the differentiated xs
    wrt_inv: tuple[int, ...]  # ... and invariants
    # (position in the own residuals, its width) of those stored as one ys block: the first
    # extra ys of fwd, their concat along the last axis (a gated cell's gates: one slab write)
    block: tuple = ()


_PLANS: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()


def body_vjp(body: Graph, n_carry: int, n_xs: int, wrt: tuple[int, ...]) -> BodyVJP:
    cache = _PLANS.setdefault(body, {})
    if wrt not in cache:
        cache[wrt] = _make_body_vjp(body, n_carry, n_xs, wrt)
    return cache[wrt]


def _split(body: Graph, n_carry: int, n_xs: int, wrt: tuple[int, ...]):
    """grad of the body, then what the backward recomputes (work on invariants only, views
    of inputs), what it reads per step (residuals) and which inputs it reads."""
    joint = grad(body, wrt=[body.inputs[k] for k in wrt], seeds="inputs")
    n_out = len(body.outputs)
    fwd_outs, grad_outs = joint.outputs[:n_out], joint.outputs[n_out:]
    forward = _needed(fwd_outs)
    varying = set(body.inputs[: n_carry + n_xs])
    redo: set[Node] = set()
    for n in joint.nodes:
        if n.op in ("input", "constant"):
            continue
        if any(i in varying for i in n.inputs) and not (
            get_op(n.op).view and all(i.op == "input" for i in n.inputs)
        ):
            varying.add(n)
        else:
            redo.add(n)  # from invariants and constants only (push-out hoists it), or a view
    # (the ys are kept anyway: a value redone from one needs no residual of its own)
    backward, read, saved = saved_split(
        joint, forward, redo, grad_outs, fwd_outs[n_carry:], products=True
    )
    saved += [c for c in body.inputs[:n_carry] if c in read]  # carry inputs: per step too
    return joint, backward, saved, read, grad_outs


def _make_body_vjp(body: Graph, n_carry: int, n_xs: int, wrt: tuple[int, ...]) -> BodyVJP:
    dtype = body_dtype(body)
    joint, backward, saved, read, grad_outs = _split(body, n_carry, n_xs, wrt)
    for n in saved:
        if n.dtype != dtype and n.dtype != np.bool_:
            raise TapernnError(
                f"scan: the body's backward reads a {n.dtype} value per step "
                f"({n.op}, scope {n.scope!r}); a scan's residuals are {dtype} "
                f"(or bool)"
            )
    saved_ops = [n for n in saved if n.op != "input"]
    bwd = _backward_graph(joint, backward, saved_ops, read, grad_outs)
    ys = list(joint.outputs[n_carry : len(body.outputs)])  # (rewired if the body has loops)
    res_from_ys = tuple(_source(n, ys, body, joint, n_carry) for n in saved)
    own = [n for n, j in zip(saved, res_from_ys) if j is None]
    block = gate_block(own)
    fwd = _extended_body(body, joint, own, dtype, [k for k, _ in block])
    n_res = len(own) - len(block) + (1 if block else 0)
    n_in = len(body.inputs)
    xs_read = tuple(k for k in range(n_carry, n_carry + n_xs) if body.inputs[k] in read)
    inv_read = tuple(k for k in range(n_carry + n_xs, n_in) if body.inputs[k] in read)
    wrt_xs = tuple(k for k in wrt if n_carry <= k < n_carry + n_xs)
    wrt_inv = tuple(k for k in wrt if k >= n_carry + n_xs)
    plan = BodyVJP(fwd, Graph(), n_res, res_from_ys, xs_read, inv_read, wrt_xs, wrt_inv, block)
    return BodyVJP(
        fwd,
        _reverse_body(body, n_carry, bwd, saved, wrt, plan, dtype),
        n_res,
        res_from_ys,
        xs_read,
        inv_read,
        wrt_xs,
        wrt_inv,
        block,
    )


def gate_block(own: list[Node]) -> tuple:
    """(position, width) of the own residuals stored as one block: the largest group (>= 2)
    of those sharing all but their last axis (an LSTM's four (B, H) gates), in their order."""
    groups: dict[tuple, list[int]] = {}
    for k, n in enumerate(own):
        if n.ndim >= 1:
            groups.setdefault(n.shape[:-1], []).append(k)
    best = max(groups.values(), key=len, default=[])
    return tuple((k, own[k].shape[-1]) for k in best) if len(best) >= 2 else ()


def _own_residuals(extra: list[Var], plan: BodyVJP) -> list[Var]:
    """The (length, *shape) stacks of the own residuals: views of the block's columns (the
    first extra ys) for those in it, the other extra ys in order for the rest."""
    n_own = plan.n_res - (1 if plan.block else 0) + len(plan.block)
    out: list[Var | None] = [None] * n_own
    rest = iter(extra[1:] if plan.block else extra)
    at = 0
    for k, w in plan.block:
        index = (slice(None),) * (extra[0].ndim - 1) + (slice(at, at + w),)
        out[k] = F.getitem(extra[0], index)
        at += w
    return [v if v is not None else next(rest) for v in out]


def _source(n: Node, ys: list[Node], body: Graph, joint: Graph, nc: int) -> tuple | None:
    """Where the reverse loop finds residual `n` without the forward writing it again."""
    if n.op != "input":
        return ("ys", ys.index(n)) if n in ys else None
    k = body.inputs.index(n)
    new = joint.outputs[k]  # carry k's next value: a ys too (an LSTM's h and c)?
    if k < nc and new is not n and new in ys:
        return ("prev", ys.index(new), k)
    return None


def _extended_body(
    body: Graph, joint: Graph, own: list[Node], dtype: np.dtype, block: list[int]
) -> Graph:
    """The body returning `own` residuals too (bool ones cast to the slab dtype), those at
    `block` first, as one concat along their last axis."""
    outputs = joint.outputs[: len(body.outputs)]  # the body's, rewired if it has loops
    forward = _needed(outputs)
    nodes = [n for n in joint.nodes if n in forward or n in body.inputs]
    outs = []
    for n in own:
        if n.dtype != dtype:
            n = Node("cast", (n,), {"dtype": dtype}, n.shape, dtype, scope=n.scope)
            nodes.append(n)
        outs.append(n)
    if block:
        pieces = [outs[k] for k in block]
        cat = derive(pieces[0], "concat", pieces, axis=pieces[0].ndim - 1)
        nodes.append(cat)
        outs = [cat] + [n for k, n in enumerate(outs) if k not in block]
    return Graph(nodes, list(body.inputs), list(outputs) + outs, body.meta)


def _reverse_body(
    body: Graph,
    nc: int,
    bwd: Graph,
    saved: list[Node],
    wrt: tuple[int, ...],
    plan: BodyVJP,
    dtype: np.dtype,
) -> Graph:
    """(carry cotangents, accumulators) + (ys cotangents, residuals, xs read) + (invariants
    read) -> (previous carry cotangents, accumulators + this step's) + (xs cotangents)."""
    n_saved_ops = sum(1 for n in saved if n.op != "input")
    saved_ops, seeds_at = bwd.inputs[:n_saved_ops], n_saved_ops
    n_out, n_acc, n_ys = len(body.outputs), len(plan.wrt_inv), len(body.outputs) - nc
    read = plan.xs_read + plan.inv_read
    position = {n: k for k, n in enumerate(body.inputs)}

    def step(*v: Var) -> list[Var]:
        dc, acc = v[:nc], v[nc : nc + n_acc]
        gy = v[nc + n_acc : nc + n_acc + n_ys]
        res = v[nc + n_acc + n_ys : nc + n_acc + n_ys + len(saved)]
        given = dict(zip(read, v[nc + n_acc + n_ys + len(saved) :]))
        value = {n: (F.cast(r, n.dtype) if n.dtype != r.dtype else r) for n, r in zip(saved, res)}
        args = [value[n] for n in _originals(saved_ops, saved)]
        args += list(dc) + list(gy)
        for i in bwd.inputs[seeds_at + n_out :]:
            k = position[i]
            args.append(value[i] if k < nc else given[k])
        grads = dict(zip(wrt, inline(bwd, args)))
        return (
            [grads[k] for k in range(nc)]
            + [a + grads[k] for a, k in zip(acc, plan.wrt_inv)]
            + [grads[k] for k in plan.wrt_xs]
        )

    examples = (
        [np.zeros(o.shape, dtype) for o in body.outputs[:nc]]
        + [np.zeros(body.inputs[k].shape, dtype) for k in plan.wrt_inv]
        + [np.zeros(o.shape, dtype) for o in body.outputs[nc:]]
        + [np.zeros(n.shape, dtype) for n in saved]
        + [np.zeros(body.inputs[k].shape, body.inputs[k].dtype) for k in read]
    )
    with phase("backward"):
        return trace(step, *examples)


def _originals(saved_ops: list[Node], saved: list[Node]) -> list[Node]:
    """The forward nodes behind the backward's "saved" inputs (in order: `_backward_graph`
    makes them from `saved`'s non-input entries)."""
    ops = [n for n in saved if n.op != "input"]
    assert len(ops) == len(saved_ops)
    return ops
