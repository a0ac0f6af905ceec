"""Memory planning over the tape schedule: storage roots (views alias their base), liveness,
a buffer plan (reuse of dead buffers of equal size and dtype, in-place where an op allows, also
into a dead region of a larger value, and concat pieces computed straight into their slot of
the concat), and byte accounting. Analyses only: they return a `BufferPlan`, never a graph.

Regions. Every computed value lives in one *storage* (a preallocated buffer, or an array
allocated per call), possibly as a strided region of it: a view, a value computed in place into
a view of a larger value (a step's gate pre-activations written over that step's rows of the
hoisted input projection), or a concat piece written into its slot. The planner tracks each
value's region as a view of a dummy array shaped like its storage (never touched: NumPy only
compares pointers and strides), so "do these two values overlap" is `np.shares_memory`. An
in-place write into region r at step k is allowed only when no value whose data was produced
before k, overlapping r, is read after k (or returned). Slot placement and the region tests
live in `regions`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .graph import Graph, Node
from .ops.registry import get_op
from .regions import (
    DEFAULT_OPTIONS,
    PSEUDO,
    PlanOptions,
    apply_steps,
    bounds,
    cheap_strides,
    is_view,
    overlap,
    placements,
)

Scratch = Callable[[Node], list[tuple[tuple[int, ...], np.dtype]]]


@dataclass
class BufferPlan:
    """Where every computed value lives.

    `buffers[b]` is (element count, dtype) of preallocated buffer b; `buffer_of[n]` the buffer
    owned by storage n (a value written by `out=`, or a concat whose pieces are placed);
    `scratch_of[n]` the buffers of a node's temporaries; `inplace[n] = i`: n is written over
    input i (i may be a view: a region of a larger value); `placed[p] = (R, steps)`: p is
    computed into the region of storage R reached by `steps` (("getitem", numpy index) or
    ("reshape", shape)), i.e. into its slot of a concat; `placed_concats`: concats with at
    least one placed piece (they only copy their unplaced pieces, if any); `storage[n]` the
    node owning the memory any computed value (views too) lives in; values in `fresh` are
    storages allocated on every call (graph outputs, so callers own them, ops without `out=`,
    and placed concats returned to the caller, allocated with np.empty at `alloc_at`).
    `root`/`last_use` are the static view roots and their last reads (through views).
    """

    schedule: list[Node]
    root: dict[Node, Node]
    last_use: dict[Node, int]
    buffers: list[tuple[int, np.dtype]] = field(default_factory=list)
    buffer_of: dict[Node, int] = field(default_factory=dict)
    scratch_of: dict[Node, list[int]] = field(default_factory=dict)
    inplace: dict[Node, Node] = field(default_factory=dict)  # node -> input it overwrites
    placed: dict[Node, tuple[Node, tuple]] = field(default_factory=dict)
    placed_concats: set[Node] = field(default_factory=set)
    placed_slots: set[tuple[Node, int]] = field(default_factory=set)  # (concat, piece index)
    storage: dict[Node, Node] = field(default_factory=dict)
    alloc_at: dict[Node, int] = field(default_factory=dict)  # storage -> first write
    release_at: dict[Node, int] = field(default_factory=dict)  # storage -> last read
    fresh: set[Node] = field(default_factory=set)
    copied_bytes: int = 0
    naive_bytes: int = 0
    planned_bytes: int = 0
    peak_bytes: int = 0
    saved_for_backward_bytes: int = 0
    kernels: int = 0

    @property
    def buffer_bytes(self) -> int:
        return sum(s * d.itemsize for s, d in self.buffers)

    @property
    def fresh_bytes(self) -> int:
        return sum(n.nbytes for n in self.fresh)

    def copied(self, o: Node, may_alias_input: bool = False) -> bool:
        """Whether returning o takes a copy: it aliases an input, a constant or a buffer (a
        view of an input is returned as is where the graph allows it)."""
        storage = self.storage.get(o)
        if o.op not in PSEUDO and storage is not None:
            return storage in self.buffer_of
        if may_alias_input:
            while o.op not in PSEUDO and get_op(o.op).view:
                o = o.inputs[0]
            return o.op != "input"
        return True

    @property
    def per_call_bytes(self) -> int:
        """Allocated on every call: fresh storages, and the copies of returned values that
        alias an input, a constant or a buffer (one per place they are returned at)."""
        return self.fresh_bytes + self.copied_bytes


def storage_roots(graph: Graph) -> dict[Node, Node]:
    """Each node's storage: itself, or (for view ops) the storage of its first input."""
    root: dict[Node, Node] = {}
    for n in graph.nodes:
        view = n.op not in PSEUDO and get_op(n.op).view
        root[n] = root[n.inputs[0]] if view else n
    return root


def liveness(graph: Graph, root: dict[Node, Node]) -> dict[Node, int]:
    """Schedule index of the last read of each storage (outputs: one past the end)."""
    last: dict[Node, int] = {}
    for k, n in enumerate(graph.nodes):
        last.setdefault(root[n], k)
        for i in n.inputs:
            last[root[i]] = k
    for o in graph.outputs:
        last[root[o]] = len(graph.nodes)
    return last


def inplace_candidates(n: Node) -> tuple[int, ...]:
    return get_op(n.op).inplace_inputs(n)


def plan_buffers(graph: Graph, scratch: Scratch | None = None,
                 options: PlanOptions = DEFAULT_OPTIONS) -> BufferPlan:
    """Assign storage in one walk over the tape (pools keyed by size and dtype). A storage that
    ends up holding a returned value (through an in-place write or a placed piece) must be
    allocated per call: the walk switches it from its buffer when that happens; should one
    still end up in a buffer, it is forced fresh and the walk repeats."""
    static = _Static(graph, options)
    force: set[Node] = set()
    while True:
        plan = _Walk(graph, static, scratch, force).run()
        need = {plan.storage[o] for o in graph.outputs
                if plan.storage.get(o) is not None and plan.storage[o] in plan.buffer_of}
        if not need:
            break
        force |= need
    _drop_unused_buffers(plan)
    _account(graph, plan)
    return plan


def _drop_unused_buffers(plan: BufferPlan) -> None:
    """Buffers no storage or temporary ended up in (handed back by a switch to per-call)."""
    used = sorted(set(plan.buffer_of.values()) | {b for ts in plan.scratch_of.values() for b in ts})
    if len(used) == len(plan.buffers):
        return
    new = {b: j for j, b in enumerate(used)}
    plan.buffers = [plan.buffers[b] for b in used]
    plan.buffer_of = {n: new[b] for n, b in plan.buffer_of.items()}
    plan.scratch_of = {n: [new[b] for b in ts] for n, ts in plan.scratch_of.items()}


class _Static:
    """What does not depend on the walk: view roots, liveness, direct reads, view children,
    and which concat pieces are placed into their slot."""

    def __init__(self, graph: Graph, options: PlanOptions):
        self.graph, self.options = graph, options
        nodes = graph.nodes
        self.N = len(nodes)
        self.pos = {n: k for k, n in enumerate(nodes)}
        self.root = storage_roots(graph)
        self.last_use = liveness(graph, self.root)
        self.outputs = set(graph.outputs)
        self.escaping = {self.root[o] for o in graph.outputs}  # returned, possibly by a view
        self.placed, self.placed_concats, self.slot_of = placements(graph, self.root, options) \
            if options.regions else ({}, set(), {})
        # direct reads: by non-view readers (a placed concat reads nothing it does not copy)
        placed_slots: dict[Node, set[int]] = {}
        for q, (c, _) in self.placed.items():
            placed_slots.setdefault(c, set()).add(self.slot_of[q])
        self.reads: dict[Node, int] = {}
        self.children: dict[Node, list[Node]] = {}
        for k, n in enumerate(nodes):
            if n.op in PSEUDO:
                continue
            if is_view(n):
                self.children.setdefault(n.inputs[0], []).append(n)
                continue
            slots = placed_slots.get(n, ())
            for j, i in enumerate(n.inputs):
                if j not in slots:  # a placed concat reads only the pieces it copies
                    self.reads[i] = k
        for o in graph.outputs:
            self.reads[o] = self.N


class _Walk:
    def __init__(self, graph: Graph, static: _Static, scratch: Scratch | None, force: set):
        self.g, self.s, self.scratch, self.force = graph, static, scratch, force
        self.options = static.options
        self.plan = BufferPlan(list(graph.nodes), static.root, static.last_use)
        self.plan.placed_concats = set(static.placed_concats)
        self.pool: dict[tuple[int, str], list[int]] = {}
        self.region: dict[Node, np.ndarray] = {}  # value -> view of its storage's dummy
        self.base: dict[Node, np.ndarray] = {}  # storage -> dummy array
        self.grid: dict[Node, tuple[int, int]] = {}  # storage -> (address, bucket bytes)
        # storage -> address bucket -> [(region, bounds, produced, last read)]
        self.entries: dict[Node, dict[int, list]] = {}
        self.released: set[Node] = set()
        # placement roots are allocated when their first (transitively) placed piece is written
        self.roots_at: dict[int, list[Node]] = {}
        self.place_root: dict[Node, tuple[Node, tuple]] = {}
        for q in sorted(static.placed, key=static.pos.get, reverse=True):  # parents first
            parent, steps = static.placed[q]
            r, outer = self.place_root.get(parent, (parent, ()))
            self.place_root[q] = (r, outer + steps)
        first: dict[Node, int] = {}
        for q, (r, _) in self.place_root.items():
            first[r] = min(first.get(r, static.N), static.pos[q])
        for r, k in first.items():
            self.roots_at.setdefault(k, []).append(r)
        self.plan.placed = {q: self.place_root[q] for q in static.placed}
        self.root_escapes = {r for q, (r, _) in self.place_root.items() if q in static.escaping}
        self.plan.placed_slots = {(static.placed[q][0], j) for q, j in static.slot_of.items()
                                  if q in static.placed}

    def run(self) -> BufferPlan:
        plan, s = self.plan, self.s
        for k, n in enumerate(self.g.nodes):
            if n.op in PSEUDO:
                continue
            if is_view(n):
                st = plan.storage.get(n.inputs[0])
                if st is not None:
                    plan.storage[n] = st
                continue
            for r in self.roots_at.get(k, ()):
                self._open_root(r, k)
            if n in plan.placed:
                r, steps = plan.placed[n]
                plan.storage[n] = r
                if n not in s.placed_concats:
                    self._produce(n, k, apply_steps(self.base[r], steps))
            elif n in plan.placed_concats:
                pass  # a placement root: opened at its first piece
            else:
                self._compute(n, k)
            self._scratch(n)
            done = {plan.storage.get(i) for i in n.inputs} | {plan.storage.get(n)}
            for st in done:
                if st is not None and st not in self.released and plan.release_at[st] <= k:
                    self._release(st)
        return plan

    # ---- storage ---------------------------------------------------------------------------

    def _new_storage(self, st: Node, k: int, fresh: bool) -> None:
        plan = self.plan
        plan.storage[st] = st
        plan.alloc_at[st] = k
        plan.release_at[st] = self.s.last_use.get(st, k)
        if fresh:
            plan.fresh.add(st)
        else:
            plan.buffer_of[st] = self._take(st.size, st.dtype)
        base = self.base[st] = np.empty(st.shape, st.dtype)
        self.grid[st] = (base.__array_interface__["data"][0], max(1, -(-base.nbytes // 64)))

    def _make_fresh(self, st: Node) -> None:
        """A buffered storage that a returned value is written into: allocate it per call
        instead, and hand its buffer back (nothing else used it while it was taken)."""
        b = self.plan.buffer_of.pop(st)
        self.plan.fresh.add(st)
        self._give(b)

    def _open_root(self, r: Node, k: int) -> None:
        """A placement root: its storage exists from its first placed piece on, and holds every
        value placed in it (transitively) and their views."""
        escaping = r in self.s.escaping or r in self.force or r in self.root_escapes
        self._new_storage(r, k, fresh=escaping)
        plan = self.plan
        for q, (root, _) in plan.placed.items():
            if root is r:
                plan.release_at[r] = max(plan.release_at[r], self.s.last_use.get(q, k))
        # the placed concats' data (the root's and nested ones') counts as produced now
        self._produce(r, k, self.base[r])
        for q, (root, steps) in plan.placed.items():
            if root is r and q in self.s.placed_concats:
                plan.storage[q] = r
                self._produce(q, k, apply_steps(self.base[r], steps))

    def _compute(self, n: Node, k: int) -> None:
        plan, s = self.plan, self.s
        op = get_op(n.op)
        if op.supports_out:  # a returned value too: its storage is then forced fresh
            for pos in inplace_candidates(n):
                i = n.inputs[pos]
                if self._can_overwrite(n, i, k):
                    st = plan.storage[i]
                    if n in s.escaping and st in plan.buffer_of:
                        if st.ndim == 0:
                            continue  # allocated per call it would be a NumPy scalar
                        self._make_fresh(st)  # now returned: the caller's, allocated per call
                    plan.inplace[n] = i
                    plan.storage[n] = st
                    plan.release_at[st] = max(plan.release_at[st], s.last_use.get(n, k))
                    self._produce(n, k, self.region[i])
                    return
        fresh = n in s.escaping or n in self.force or not op.supports_out
        self._new_storage(n, k, fresh)
        self._produce(n, k, self.base[n])

    def _can_overwrite(self, n: Node, i: Node, k: int) -> bool:
        plan = self.plan
        st = plan.storage.get(i)
        if st is None or i.shape != n.shape or i.dtype != n.dtype or n.inputs.count(i) != 1:
            return False
        if not self.options.regions and (st is not i or st not in plan.buffer_of
                                         or n in self.s.escaping):
            return False
        if st in plan.fresh and st not in plan.placed_concats and (
                st.ndim == 0 or not get_op(st.op).supports_out):
            return False  # an op's own result may alias its inputs, or be a NumPy scalar
        r = self.region.get(i)
        if r is None or not r.flags.writeable or not np.shares_memory(r, self.base[st]):
            return False
        if not cheap_strides(r, st.nbytes, self.options, escaping=n in self.s.escaping):
            return False
        rb = bounds(r)
        for j in n.inputs:
            if j is not i and plan.storage.get(j) is st:
                rj = self.region.get(j)
                if rj is None or overlap(r, rb, rj, bounds(rj)):
                    return False
        buckets = self.entries.get(st)
        if buckets is None:
            return True
        for key in self._buckets(st, rb):
            live = buckets.get(key)
            if not live:
                continue
            keep = [e for e in live if e[3] > k]
            buckets[key] = keep
            if any(e[2] < k and overlap(r, rb, e[0], e[1]) for e in keep):
                return False
        return True

    def _buckets(self, st: Node, bounds: tuple[int, int]) -> range:
        """Entries are filed by address in 64 buckets per storage, so a check only looks at
        the regions near its own (a step's rows of the projection, not all T steps')."""
        lo0, size = self.grid[st]
        return range((bounds[0] - lo0) // size, (bounds[1] - 1 - lo0) // size + 1)

    def _file(self, st: Node, entry: tuple) -> None:
        buckets = self.entries.setdefault(st, {})
        for key in self._buckets(st, entry[1]):
            buckets.setdefault(key, []).append(entry)

    def _produce(self, n: Node, k: int, region: np.ndarray) -> None:
        """n's data is written at k into `region` of its storage: record the regions of n and of
        its views with the last step reading them directly."""
        st = self.plan.storage[n]
        stack = [(n, region)]
        while stack:
            v, r = stack.pop()
            self.region[v] = r
            last = self.s.reads.get(v, -1)
            if last > k and r.size:
                self._file(st, (r, bounds(r), k, last))
            for w in self.s.children.get(v, ()):
                try:
                    rw = np.asarray(get_op(w.op).forward(r, **w.attrs))
                except Exception:  # noqa: BLE001 - a view op that cannot run on the dummy
                    rw = None
                if rw is None or not np.shares_memory(rw, r):
                    # a copying view reads all of r when made; views of it live elsewhere
                    if r.size:
                        self._file(st, (r, bounds(r), k, max(self.s.pos[w], last)))
                    continue
                stack.append((w, rw))

    def _scratch(self, n: Node) -> None:
        temps = [self._take(int(np.prod(s, dtype=np.int64)), np.dtype(d))
                 for s, d in (self.scratch(n) if self.scratch else [])]
        if temps:
            self.plan.scratch_of[n] = temps
        for b in temps:
            self._give(b)

    def _release(self, st: Node) -> None:
        self.released.add(st)
        b = self.plan.buffer_of.get(st)
        if b is not None:
            self._give(b)

    def _take(self, size: int, dtype: np.dtype) -> int:
        free = self.pool.get((size, dtype.str))
        if free:
            return free.pop()
        self.plan.buffers.append((size, dtype))
        return len(self.plan.buffers) - 1

    def _give(self, b: int) -> None:
        size, dtype = self.plan.buffers[b]
        self.pool.setdefault((size, dtype.str), []).append(b)


def _account(graph: Graph, plan: BufferPlan) -> None:
    computed = [n for n in graph.nodes if n.op not in PSEUDO]
    # a concat whose pieces are all computed into its slots runs no kernel
    placed_all = [c for c in plan.placed_concats
                  if all((c, j) in plan.placed_slots for j in range(len(c.inputs)))]
    plan.kernels = len(computed) - len(placed_all)
    plan.naive_bytes = sum(n.nbytes for n in computed)
    alias = set(graph.meta.outputs_may_alias_inputs)
    plan.copied_bytes = sum(o.nbytes for k, o in enumerate(graph.outputs)
                            if plan.copied(o, k in alias))
    plan.planned_bytes = plan.buffer_bytes + plan.per_call_bytes
    plan.peak_bytes = _peak(graph, plan) if not plan.copied_bytes else max(
        _peak(graph, plan), _live_at_end(graph, plan) + plan.copied_bytes)
    plan.saved_for_backward_bytes = saved_bytes(graph)


def _peak(graph: Graph, plan: BufferPlan) -> int:
    """Most bytes of owned storage live at once (in-place and placed values share theirs)."""
    delta = [0] * (len(graph.nodes) + 2)
    for st, start in plan.alloc_at.items():
        end = min(plan.release_at.get(st, start), len(graph.nodes))
        delta[start] += st.nbytes
        delta[end + 1] -= st.nbytes
    live = peak = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def _live_at_end(graph: Graph, plan: BufferPlan) -> int:
    end = len(graph.nodes)
    return sum(st.nbytes for st, r in plan.release_at.items() if r >= end)


def saved_bytes(graph: Graph) -> int:
    """Bytes kept from forward for backward: the outputs meta names as saved, else forward
    values (not inputs) read by backward nodes."""
    saved = graph.meta.saved_outputs
    if saved is not None:
        return sum(graph.outputs[k].nbytes for k in saved)
    kept = {i for n in graph.nodes if n.phase == "backward" for i in n.inputs
            if i.phase == "forward" and i.op not in PSEUDO}
    return sum(n.nbytes for n in kept)
