"""Memory planning over the tape schedule: storage roots (views alias their base), liveness,
a buffer plan (reuse of dead buffers of equal size and dtype, in place where an op allows); its
bytes are counted by accounting.py. Analyses only: they return a `BufferPlan`, never a graph. This is the plain
planner (in place only over a whole dead buffer); regions.py (the optimisation tier) extends
its walk to strided regions of larger values and concat slots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .accounting import account
from .graph import Graph, Node
from .ops.registry import PSEUDO, get_op
from .passes.driver import PlanStats
from .plan_options import DEFAULT_OPTIONS, PlanOptions


def is_view(n: Node) -> bool:
    return n.op not in PSEUDO and get_op(n.op).view


def concat_slots(c: Node):
    """(piece index, piece, index of its slot in the concat's result) for each operand."""
    axis = int(c.attrs["axis"]) % c.ndim
    offset = 0
    for j, piece in enumerate(c.inputs):
        width = piece.shape[axis]
        yield j, piece, (slice(None),) * axis + (slice(offset, offset + width),)
        offset += width


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
    slab_roots: set[Node] = field(default_factory=set)  # loops holding a placed input (regions)
    # loop -> the input it is computed into (its leading elements; donate.py, dz_in_gates)
    donated: dict[Node, Node] = field(default_factory=dict)
    # returned GEMM -> (input, element offset): computed over the dead tail of a donated
    # loop's rows (donate.tail_gemms; codegen calls donate.tail_matmul): not per call
    tail_of: dict[Node, tuple[Node, int]] = field(default_factory=dict)
    storage: dict[Node, Node] = field(default_factory=dict)
    alloc_at: dict[Node, int] = field(default_factory=dict)  # storage -> first write
    release_at: dict[Node, int] = field(default_factory=dict)  # storage -> last read
    fresh: set[Node] = field(default_factory=set)
    copied_bytes: int = 0  # copies of returned values that alias an input or a buffer
    stats: PlanStats = field(default_factory=PlanStats)  # what it comes to (accounting.py)

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
            return storage in self.buffer_of or storage in self.donated
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


def plan_buffers(
    graph: Graph,
    scratch: Scratch | None = None,
    options: PlanOptions = DEFAULT_OPTIONS,
    donate: dict[int, int] | None = None,
    per_call: frozenset[Node] = frozenset(),
    tails: dict[Node, tuple[Node, int]] | None = None,
) -> BufferPlan:
    """Assign storage in one walk over the tape (pools keyed by size and dtype): the plain walk
    below, or with `options.regions` the region planner's (regions.py). A storage that ends up
    holding a returned value (through an in-place write or a placed piece) must be allocated
    per call: the walk switches it from its buffer when that happens; should one still end up
    in a buffer, it is forced fresh and the walk repeats. `donate` (donate.donatable of the
    forward, for its backward): loops computed into the leading elements of an input (the
    Python runner and the numba loop kernel's runner write over it when its xs rows lie where
    the steps to come do not write: scan_run.writable_over_xs). `per_call`: values allocated per call, never in a buffer (a
    TrainingPair's forward temporaries that would set the shared arena: arena.per_call)."""
    walk = _walks["regions"] if options.regions else Walk
    static = walk.Static(graph, options)
    if donate:
        from .donate import donations

        taken = set(getattr(static, "placed", ())) | set(getattr(static, "slab_roots", ()))
        taken |= set(getattr(static, "placed_concats", ()))
        found = donations(graph, static.root, donate)
        static.donated = {s: i for s, i in found.items() if s not in taken}
        static.tail = _tails_last(graph, static, tails or {})
    force: set[Node] = set(per_call)
    while True:
        plan = walk(graph, static, scratch, force).run()
        need = {
            plan.storage[o]
            for o in graph.outputs
            if plan.storage.get(o) is not None and plan.storage[o] in plan.buffer_of
        }
        if not need:
            break
        force |= need
    _drop_unused_buffers(plan)
    account(graph, plan)
    return plan


def _tails_last(graph: Graph, static, tails: dict) -> dict:
    """The tail GEMMs (donate.tail_gemms) whose loop is still donated and that read the loop's
    result and its input last (donate.last_reads scheduled them so)."""
    out = {}
    for m, (inp, off) in tails.items():
        s = static.root.get(m.inputs[0])
        k = static.pos.get(m)
        if (
            k is not None
            and static.donated.get(s) is inp
            and static.last_use.get(s) == k
            and static.last_use.get(inp, -1) <= k
        ):
            out[m] = (inp, off)
    return out


def register_region_walk(walk: type[Walk]) -> None:
    """The region planner (regions.py, the optimisation tier) hands its walk in; the kernel
    never imports it. `import tapernn` loads it."""
    _walks["regions"] = walk


def _drop_unused_buffers(plan: BufferPlan) -> None:
    """Buffers no storage or temporary ended up in (handed back by a switch to per-call)."""
    used = sorted(set(plan.buffer_of.values()) | {b for ts in plan.scratch_of.values() for b in ts})
    if len(used) == len(plan.buffers):
        return
    new = {b: j for j, b in enumerate(used)}
    plan.buffers = [plan.buffers[b] for b in used]
    plan.buffer_of = {n: new[b] for n, b in plan.buffer_of.items()}
    plan.scratch_of = {n: [new[b] for b in ts] for n, ts in plan.scratch_of.items()}


class WalkStatic:
    """What does not depend on the walk: view roots, liveness, returned storages."""

    def __init__(self, graph: Graph, options: PlanOptions):
        self.graph, self.options = graph, options
        self.N = len(graph.nodes)
        self.pos = {n: k for k, n in enumerate(graph.nodes)}
        self.root = storage_roots(graph)
        self.last_use = liveness(graph, self.root)
        self.escaping = {self.root[o] for o in graph.outputs}  # returned, possibly by a view
        self.donated: dict[Node, Node] = {}  # loop -> input it is computed into (plan_buffers)
        self.tail: dict[Node, tuple[Node, int]] = {}  # GEMM -> (input, offset): plan.tail_of


class Walk:
    """The plain planner: every value in a buffer of its own size and dtype taken from a pool
    when it is first written and given back after its last read, or written in place over an
    input whose whole buffer dies there; returned values allocated per call."""

    Static = WalkStatic

    def __init__(self, graph: Graph, static: WalkStatic, scratch: Scratch | None, force: set):
        self.g, self.s, self.scratch, self.force = graph, static, scratch, force
        self.options = static.options
        self.plan = BufferPlan(list(graph.nodes), static.root, static.last_use)
        self.pool: dict[tuple[int, str], list[int]] = {}
        self.released: set[Node] = set()

    def run(self) -> BufferPlan:
        plan = self.plan
        for k, n in enumerate(self.g.nodes):
            if n.op in PSEUDO:
                continue
            if is_view(n):
                st = plan.storage.get(n.inputs[0])
                if st is not None:
                    plan.storage[n] = st
                continue
            self._node(n, k)
            self._scratch(n)
            # (in the inputs' order, then n's: a set of Nodes iterates by id(), and the order
            # buffers return to the pool picks which one a later value takes -- the same
            # program's text then varied with the process's history, hcold4)
            done = dict.fromkeys([plan.storage.get(i) for i in n.inputs] + [plan.storage.get(n)])
            for st in done:
                if st is not None and st not in self.released and plan.release_at[st] <= k:
                    self._release(st)
        return plan

    def _node(self, n: Node, k: int) -> None:
        self._compute(n, k)

    def _new_storage(self, st: Node, k: int, fresh: bool) -> None:
        plan = self.plan
        plan.storage[st] = st
        plan.alloc_at[st] = k
        plan.release_at[st] = self.s.last_use.get(st, k)
        if st in self.s.donated:  # in the input's memory: neither a buffer nor per call
            plan.donated[st] = self.s.donated[st]
        elif st in self.s.tail:  # over a donated loop's dead rows (donate.tail_gemms)
            plan.tail_of[st] = self.s.tail[st]
        elif fresh:
            plan.fresh.add(st)
        else:
            plan.buffer_of[st] = self._take(st.size, st.dtype)

    def _make_fresh(self, st: Node) -> None:
        """A buffered storage that a returned value is written into: allocate it per call
        instead, and hand its buffer back (nothing else used it while it was taken)."""
        b = self.plan.buffer_of.pop(st)
        self.plan.fresh.add(st)
        self._give(b)

    def _compute(self, n: Node, k: int) -> None:
        plan, s = self.plan, self.s
        op = get_op(n.op)
        if op.supports_out and n not in s.donated:  # returned: its storage is then forced fresh
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
                    self._produced(n, k, i)
                    return
        fresh = n in s.escaping or n in self.force or not op.supports_out
        self._new_storage(n, k, fresh)
        self._produced(n, k, None)

    def _produced(self, n: Node, k: int, over: Node | None) -> None:
        """n was written at k, in place over input `over` or into its own new storage (the
        region planner records regions here)."""

    def _can_overwrite(self, n: Node, i: Node, k: int) -> bool:
        """Plain: only over an input that owns its whole buffer, read by nothing after n."""
        plan = self.plan
        st = plan.storage.get(i)
        return (
            st is i
            and st in plan.buffer_of
            and n not in self.s.escaping
            and i.shape == n.shape
            and i.dtype == n.dtype
            and n.inputs.count(i) == 1
            and plan.release_at[st] <= k
        )

    def _scratch(self, n: Node) -> None:
        temps = [
            self._take(int(np.prod(s, dtype=np.int64)), np.dtype(d))
            for s, d in (self.scratch(n) if self.scratch else [])
        ]
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


_walks: dict[str, type[Walk]] = {}
