"""Feature-major recurrent state (issue 19; cuDNN's layout choice, no Torch7 counterpart): a
scan's (B, n) carries run as (n, B), so h @ U^T becomes U @ h^T ((4H, H) @ (H, B)); transposes
are pushed through elementwise ops, matmuls, slices and concats, ys are stored as computed and
read through transposed views. The choice: PlanOptions.layout ("batch" | "feature" | "auto")."""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..graph import Graph, Node
from ..ops.registry import get_op
from .layout_rule import choose
from .rewrite import derive, input_like, substitute, zeros_like_node

LAYOUTS = ("batch", "feature", "auto")


@dataclass
class Session:
    """One compile's layout choice and the report lines the pass wrote."""

    mode: str = "auto"  # (PlanOptions.layout's default)
    # (min rows, min weight elements) of the step GEMMs compiled packed (backends/packed.rule)
    packed: tuple[int, int] | None = None
    backend: str = ""  # the programs' backend (PlanOptions.backend): the rule times on it
    notes: list[str] = field(default_factory=list)
    feature: bool = False  # some loop went feature-major
    # "auto" decisions the real programs should confirm (layout_rule._RECHECK: nn/layout_recheck)
    recheck: list = field(default_factory=list)


_SESSION: ContextVar[Session | None] = ContextVar("tapernn_layout", default=None)


@contextmanager
def layout_session(
    mode: str, packed: tuple[int, int] | None = None, backend: str = ""
) -> Iterator[Session]:
    """Run passes under layout `mode` (executor.compile opens one per compile); `packed`: which
    step GEMMs the programs run packed (Session.packed); `backend`: the programs' backend."""
    token = _SESSION.set(Session(mode, packed=packed, backend=backend))
    try:
        yield _SESSION.get()
    finally:
        _SESSION.reset(token)


def _session() -> Session:
    return _SESSION.get() or Session()


@dataclass(frozen=True)
class Relayout:
    """A body rewritten: `carries[k]` carry k held transposed; `inputs` per new xs/invariant
    input (old body input index, transposed?); `ys[j]` where old ys j is now (_ys_kinds)."""

    body: Graph
    carries: tuple[bool, ...]
    inputs: tuple[tuple[int, bool], ...]
    n_xs: int
    ys: tuple[tuple, ...]


_MADE: weakref.WeakSet[Graph] = weakref.WeakSet()  # bodies this pass made: never redone
_CACHE: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()


def feature_major_loops(graph: Graph) -> Graph:
    """Every scan the layout choice makes feature-major: its 2-D carries held as (n, B), the
    initial ones transposed at the loop boundary, the body rewritten so no per-step transpose
    remains, the slab's carries and ys read through transposed views. The carries' layout is
    chosen in graphs not yet differentiated (a Sequencer's, before `grad`: its backward loop
    is then derived feature-major); under "feature", the loops of differentiated or split
    graphs (a training program's halves) get the rest: ys computed as per-step transposes
    stored as computed, ys that copy an xs read from the xs, a value stored twice once."""
    session = _session()
    carries_too = not _differentiated(graph)
    subst: dict[Node, Node] = {}
    for s in graph.nodes:
        if s.op != "scan" or s.attrs.get("shifted"):  # (a grad's forward loop: its layout is set)
            continue
        a = s.attrs
        body, nc, nx = a["body"], a["n_carry"], a["n_xs"]
        fresh = carries_too and body not in _MADE
        pick, why = "batch", "layout='batch'"
        if session.mode == "feature":
            pick, why = "feature", "layout='feature'"
        elif session.mode == "auto" and fresh:
            pick, why = choose(body, nc, nx, session.packed, session.backend, session.recheck)
            why = f"auto: {why}"
        r = None if pick == "batch" else relayout(body, nc, nx, fresh)
        found = None if r is None else _rewire(graph, s, r)
        if found is None and pick == "feature" and fresh:
            pick, why = (
                "batch",
                f"{why} asked feature-major, but "
                + (
                    "the loop carries no (B, n) state"
                    if r is None
                    else "a reader of the loop's slab is not one the pass follows"
                ),
            )
        if fresh:
            session.notes.append(f"layout (loop {s.scope or '(top)'}): {pick}-major ({why})")
        if found is None:
            continue
        session.feature = session.feature or fresh
        subst.update(found)
    return substitute(graph, subst) if subst else graph


def relayout_before_grad(
    graph: Graph,
    mode: str,
    packed: tuple[int, int] | None = None,
    backend: str = "",
    recheck: list | None = None,
) -> tuple[Graph, list[str], str]:
    """`graph` (a traced forward) with its loops' layout chosen (the nn runtime runs this before
    `grad`, so the backward loop is derived from the chosen forward); the report lines, and
    the layout its programs compile with ("feature" if a loop went feature-major). `recheck`
    gets the keys of the "auto" decisions the real programs should confirm."""
    with layout_session(mode, packed, backend) as session:
        out = feature_major_loops(graph)
    if recheck is not None:
        recheck += session.recheck
    return out, session.notes, "feature" if session.feature else "batch"


def _differentiated(graph: Graph) -> bool:
    m = graph.meta
    return bool(m.wrt or m.seeds or m.saved_names or m.saved_outputs is not None) or any(
        n.phase == "backward" for n in graph.nodes
    )


def relayout(body: Graph, nc: int, nx: int, carries: bool) -> Relayout | None:
    """`body` rewritten (cached per body): with `carries`, its 2-D carries transposed; always,
    ys computed as transposes of per-step values stored untransposed. None: nothing changes."""
    cache = _CACHE.setdefault(body, {})
    key = (nc, nx, carries)
    if key not in cache:
        cache[key] = _Walk(body, nc, nx, carries).result()
        if cache[key] is not None:
            _MADE.add(cache[key].body)
    return cache[key]


def _swap(index: tuple) -> tuple | None:
    """A 2-D basic-slice index with its two axes swapped, or None."""
    full = ("s", None, None, None)
    index = tuple(index) + (full,) * (2 - len(index))
    if len(index) != 2 or not all(isinstance(k, tuple) and k[0] == "s" for k in index):
        return None
    return (index[1], index[0])


class _Walk:
    """One pass over a body: `T[n]` is n's transposed (feature-major) form, `O[n]` its form in
    the old layout; each made lazily from the other when a user needs it."""

    def __init__(self, body: Graph, nc: int, nx: int, carries: bool):
        self.body, self.nc, self.nx = body, nc, nx
        self.T: dict[Node, Node] = {}
        self.O: dict[Node, Node] = {}
        self.used: set[Node] = set()  # old-layout inputs read
        self.t_inputs: dict[Node, Node] = {}
        self.made: list[Node] = []
        self.carries = tuple(carries and k < nc and i.ndim == 2 for k, i in enumerate(body.inputs))
        for k, i in enumerate(body.inputs):
            if k < nc and self.carries[k]:
                self.T[i] = input_like(i, i.shape[::-1], f"{i.name}^T")
            else:
                self.O[i] = i

    def _add(self, n: Node) -> Node:
        self.made.append(n)
        return n

    def orig(self, n: Node) -> Node:
        if n in self.O:
            if n.op == "input":
                self.used.add(n)
            return self.O[n]
        self.O[n] = self._add(derive(n, "transpose", (self.T[n],), axes=(1, 0)))
        return self.O[n]

    def tof(self, n: Node) -> Node:
        """n as an operand of a feature-major op."""
        if n in self.T:
            return self.T[n]
        if n.ndim == 0:
            return self.orig(n)
        if n.ndim == 1:
            return self._add(derive(n, "reshape", (self.orig(n),), shape=(n.shape[0], 1)))
        if n.op == "input":  # an xs or invariant: transposed once outside the loop
            if n not in self.t_inputs:
                self.t_inputs[n] = input_like(n, n.shape[::-1], f"{n.name}^T")
            return self.t_inputs[n]
        o = self.orig(n)
        if get_op(n.op).elementwise and all(i.ndim <= 2 for i in n.inputs):
            # pushed through (x_t W + b: its transpose is the time-batched, contiguous xs)
            t = self._add(derive(n, n.op, [self.tof(i) for i in n.inputs], **n.attrs))
        elif o.op == "transpose" and o.inputs[0].ndim == 2:
            t = o.inputs[0]  # (x^T)^T
        elif o.op == "zeros":
            t = self._add(zeros_like_node(o, o.shape[::-1]))
        else:
            t = self._add(derive(n, "transpose", (o,), axes=(1, 0)))
        self.T[n] = t
        return t

    def convert(self, n: Node) -> Node | None:
        """n computed feature-major from its inputs' transposed forms, or None."""
        if n.ndim != 2 or not any(i in self.T for i in n.inputs):
            return None
        ins = n.inputs
        if get_op(n.op).elementwise and all(i.ndim <= 2 for i in ins):
            return derive(n, n.op, [self.tof(i) for i in ins], **n.attrs)
        if n.op == "matmul" and all(i.ndim == 2 for i in ins):
            return derive(n, "matmul", (self.tof(ins[1]), self.tof(ins[0])))
        if n.op in ("getitem", "index_grad") and ins[0].ndim == 2:
            index = _swap(n.attrs["index"])
            if index is None:
                return None
            attrs = {"index": index}
            if n.op == "index_grad":
                attrs["shape"] = tuple(n.attrs["shape"])[::-1]
            return derive(n, n.op, (self.tof(ins[0]),), **attrs)
        if n.op == "concat" and all(i.ndim == 2 for i in ins):
            return derive(n, "concat", [self.tof(i) for i in ins], axis=1 - n.attrs["axis"] % 2)
        return None

    def result(self) -> Relayout | None:
        body, nc = self.body, self.nc
        for n in body.nodes:
            if n.op == "input":
                continue
            t = self.convert(n)
            if t is not None:
                self.T[n] = self._add(t)
            else:
                ins = tuple(self.orig(i) for i in n.inputs)
                self.O[n] = self._add(n if ins == n.inputs else n.with_inputs(ins))
        outs, stored = [], []
        for k, o in enumerate(body.outputs):
            if k < nc:
                outs.append(self.tof(o) if self.carries[k] else self.orig(o))
                continue
            if o not in self.T:
                v = self.orig(o)
                if v.op == "transpose" and v.ndim == 2:
                    self.T[o] = v.inputs[0]  # a per-step transpose: stored as computed
            flag = o in self.T and o.ndim == 2
            stored.append((self.T[o] if flag else self.orig(o), flag))
        inputs = [self.T[i] if self.carries[k] else i for k, i in enumerate(body.inputs[:nc])]
        kinds: list[tuple[int, bool]] = []
        for k in range(nc, len(body.inputs)):
            i = body.inputs[k]
            if i in self.used or i not in self.t_inputs:
                kinds.append((k, False))
                inputs.append(i)
            if i in self.t_inputs:
                kinds.append((k, True))
                inputs.append(self.t_inputs[i])
        n_xs = sum(1 for k, _ in kinds if k < nc + self.nx)
        ys = _ys_kinds(stored, inputs[nc : nc + n_xs], nc, outs)
        if not any(self.carries) and all(y == ("ys", j, False) for j, y in enumerate(ys)):
            return None
        nodes = inputs + [n for n in dict.fromkeys(self.made) if n.op != "input"]
        new = Graph(nodes, inputs, outs, body.meta).eliminate_dead_code()
        new.inputs = inputs  # (unused inputs stay: the scan's interface)
        new.verify()
        return Relayout(new, self.carries[:nc], tuple(kinds), n_xs, tuple(ys))


def _ys_kinds(stored: list, xs: list, nc: int, outs: list) -> list[tuple]:
    """Per old ys: ("ys", new ys index, transposed?), or ("xs", scan input position,
    transposed?) for a per-step copy of an xs (read from the stacked xs itself); a value
    stored twice is stored once. Appends the stored ys to `outs`."""
    kinds: list[tuple] = []
    where: dict[Node, int] = {}
    for v, flag in stored:
        if v in xs:
            kinds.append(("xs", nc + xs.index(v), flag))
            continue
        if v not in where:
            where[v] = len(outs) - nc
            outs.append(v)
        kinds.append(("ys", where[v], flag))
    return kinds


def offsets(shapes: list) -> list[tuple[int, int]]:
    """(start, stop) of each flattened shape laid out one after another (the slab's layout,
    scan_ir.offsets; the loops layer sits above the passes)."""
    out, start = [], 0
    for s in shapes:
        out.append((start, start + math.prod(s)))
        start += math.prod(s)
    return out


def _users(graph: Graph) -> dict[Node, list[Node]]:
    out: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        for i in dict.fromkeys(n.inputs):
            out.setdefault(i, []).append(n)
    return out


def _span(n: Node) -> tuple | None:
    """(start, stop) of a getitem reading one plain slice of a 1-D value."""
    index = n.attrs.get("index", ())
    if n.op != "getitem" or len(index) != 1 or not isinstance(index[0], tuple):
        return None
    k = index[0]
    return (k[1], k[2]) if k[0] == "s" and k[3] in (None, 1) else None


def _rewire(graph: Graph, s: Node, r: Relayout) -> dict[Node, Node] | None:
    """The substitution running scan `s` as `r` says, its slab's readers reading through
    transposed views; None when some reader is not one the pass follows."""
    a = s.attrs
    body, nc, length = a["body"], a["n_carry"], a["length"]
    if s in graph.outputs:
        return None
    ins = [
        derive(i, "transpose", (i,), axes=(1, 0)) if t else i for i, t in zip(s.inputs, r.carries)
    ]
    for k, t in r.inputs:
        i = s.inputs[k]
        if t:
            axes = (0, 2, 1) if k < nc + a["n_xs"] else (1, 0)
            i = derive(i, "transpose", (i,), axes=axes)
        ins.append(i)
    s2 = derive(
        s, "scan", ins, body=r.body, n_carry=nc, n_xs=r.n_xs, length=length, reverse=a["reverse"]
    )
    subst: dict[Node, Node] = {s: s2}
    users = _users(graph)
    c, y = (
        sum(math.prod(o.shape) for o in outs) for outs in (body.outputs[:nc], body.outputs[nc:])
    )
    spans = offsets([o.shape for o in body.outputs[:nc]])
    for u in users.get(s, []):
        span = _span(u)
        if span in spans and r.carries[spans.index(span)]:
            k = spans.index(span)
            shape = body.outputs[k].shape
            if u in graph.outputs:
                return None
            for v in users.get(u, []):
                if v.op != "reshape" or v.shape != shape:
                    return None
                part = derive(u, "getitem", (s2,), index=u.attrs["index"])
                held = derive(v, "reshape", (part,), shape=shape[::-1])
                subst[v] = derive(v, "transpose", (held,), axes=(1, 0))
        elif span == (c, c + length * y) and y:
            if not _rewire_ys(body, nc, length, r, s2, u, users, subst, graph.outputs):
                return None
        elif span is None or span not in spans:
            return None
    return subst


def _rewire_ys(body, nc, length, r, s2, u, users, subst, outputs) -> bool:
    """The readers of the ys region `u`: (length, y) rows, a ys' columns, its (length, *shape)
    view; each now read where `r.ys` says (through a transposed view where stored so)."""
    shapes = [o.shape for o in body.outputs[nc:]]
    spans = offsets(shapes)
    y = spans[-1][1]
    new_shapes = [o.shape for o in r.body.outputs[nc:]]
    new_spans = offsets(new_shapes)
    new_y = new_spans[-1][1] if new_spans else 0
    part = derive(u, "getitem", (s2,), index=(("s", u.attrs["index"][0][1], None, None),))
    rows2 = None
    outputs = set(outputs)
    if u in outputs:
        return False
    for rows in users.get(u, []):
        if rows.op != "reshape" or rows.shape != (length, y) or rows in outputs:
            return False
        for blk in users.get(rows, []):
            j, cols = _block(blk, rows, spans, y)
            if j is None or (cols is not None and blk in outputs):
                return False
            kind, at, flag = r.ys[j]
            if kind == "xs":
                view = s2.inputs[at]
            else:
                if rows2 is None:
                    rows2 = derive(rows, "reshape", (part,), shape=(length, new_y))
                a, b = new_spans[at]
                whole = (a, b) == (0, new_y)
                index = (("s", None, None, None), ("s", a, b, None))
                block2 = rows2 if whole else derive(blk, "getitem", (rows2,), index=index)
                view = derive(blk, "reshape", (block2,), shape=(length, *new_shapes[at]))
            if flag:
                view = derive(blk, "transpose", (view,), axes=(0, 2, 1))
            for v in [blk] if cols is None else users.get(blk, []):
                if v.op != "reshape":
                    return False
                same = v.shape == view.shape
                subst[v] = view if same else derive(v, "reshape", (view,), shape=v.shape)
    return True


def _block(blk: Node, rows: Node, spans: list, y: int) -> tuple:
    """(ys index, the columns' index or None) of a reader of the rows: a whole-row reshape
    (one ys) or a getitem of exactly one ys' columns; (None, None) for anything else."""
    if blk.op == "reshape":
        return (0, None) if spans == [(0, y)] else (None, None)
    index = blk.attrs.get("index", ())
    if blk.op != "getitem" or len(index) != 2 or not _whole(index[0], rows.shape[0]):
        return None, None
    k = index[1]
    if not (isinstance(k, tuple) and k[0] == "s" and k[3] in (None, 1)):
        return None, None
    start, stop = k[1] or 0, y if k[2] is None else k[2]
    return (spans.index((start, stop)), index) if (start, stop) in spans else (None, None)


def _whole(k, n: int) -> bool:
    """k is a slice over all n rows."""
    return (
        isinstance(k, tuple)
        and k[0] == "s"
        and k[1] in (None, 0)
        and k[2] in (None, n)
        and k[3] in (None, 1)
    )
