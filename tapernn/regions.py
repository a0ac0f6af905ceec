"""The region planner (optimisation tier; PlanOptions.regions): extends memory.py's plain walk
so a value can be computed in place into a dead region of a larger value and a concat piece
straight into its slot of the concat.

Every computed value lives in one *storage* (a preallocated buffer, or an array allocated per
call), possibly as a strided region of it: a view, a value computed in place into a view of a
larger value (a step's gate pre-activations written over that step's rows of the hoisted input
projection), or a concat piece written into its slot. The walk tracks each value's region as a
view of a dummy array shaped like its storage (never touched: NumPy only compares pointers and
strides), so "do these two values overlap" is `np.shares_memory`. An in-place write into
region r at step k is allowed only when no value whose data was produced before k, overlapping
r, is read after k (or returned)."""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node
from .memory import (  # noqa: F401  (PlanOptions, DEFAULT_OPTIONS: re-exported)
    DEFAULT_OPTIONS,
    PSEUDO,
    PlanOptions,
    Walk,
    WalkStatic,
    concat_slots,
    is_view,
    register_region_walk,
)
from .ops.registry import get_op, rows_writable
from .plan_options import lowering_size
from .slab_halves import crosses, split_rows

_TooHard = getattr(getattr(np, "exceptions", np), "TooHardError", Exception)


def cheap_strides(
    region: np.ndarray, storage_bytes: int, options: PlanOptions, escaping: bool = False
) -> bool:
    if region.flags.c_contiguous:
        return True
    run = 1
    for n, s in zip(reversed(region.shape), reversed(region.strides)):
        if s != run * region.itemsize:
            break
        run *= n
    min_run = options.strided_min_run
    if escaping:
        min_run = min(min_run, options.escaping_min_run)
    return storage_bytes >= options.strided_min_bytes and run >= min_run


def placements(
    graph: Graph, root: dict[Node, Node], options: PlanOptions
) -> tuple[dict, set, dict]:
    """p -> (concat, steps into the concat's array) for each concat piece p that can be computed
    straight into its slot: a computed non-view value written by `out=`, used once by that
    concat and placed nowhere else (seen through a reshape when the slot is contiguous)."""
    placed: dict[Node, tuple[Node, tuple]] = {}
    slot_of: dict[Node, int] = {}
    concats: set[Node] = set()
    inputs = set(graph.inputs)
    for c in graph.nodes:
        if c.op != "concat":
            continue
        for j, piece, index in concat_slots(c):
            q, steps = piece, (("getitem", index),)
            if q.op == "reshape" and q.inputs[0].op not in PSEUDO:
                q, steps = q.inputs[0], steps + (("reshape", q.inputs[0].shape),)
            if (
                q.op in PSEUDO
                or q in inputs
                or is_view(q)
                or not get_op(q.op).supports_out
                or q in placed
                or c.inputs.count(piece) != 1
                or root[q] is not q
            ):
                continue
            placed[q] = (c, steps)
            slot_of[q] = j
            concats.add(c)
    # slots must be true writable views (a reshape of a strided slot would copy): check on a
    # dummy array from each placement root down; a piece that fails is computed as usual
    for c in [c for c in graph.nodes if c in concats and c not in placed]:
        _check_slots(c, np.empty(c.shape, c.dtype), placed, concats, options)
    return placed, concats, slot_of


def slab_placements(
    graph: Graph, root: dict[Node, Node], placed: dict, escaping: set, options: PlanOptions
) -> dict[Node, tuple[Node, tuple]]:
    """m -> (loop, steps) for each time-batched input m of a loop (an op with `rows`: scan)
    that can be computed straight into the rows the loop writes (PlanOptions.xs_in_slab): m
    reaches the loop's row operands only through views and elementwise ops that can be written
    in place over it, nothing else reads it, and (checked on a dummy slab) every operand it
    reaches has row t of its time axis inside row t of the loop's rows -- and, in a loop that
    may run its batch halves at once, no half's rows in the other half's (slab_halves.py)."""
    users: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    outputs = set(graph.outputs)
    found: dict[Node, tuple[Node, tuple]] = {}
    for s in graph.nodes:
        rule = None if s.op in PSEUDO else get_op(s.op).rows
        got = rule(s) if rule is not None else None
        if got is None or s in placed:
            continue
        positions, start, row, length = got
        chains: dict[Node, list[tuple[int, list[Node]]]] = {}
        for p in positions:
            chain = _chain_to_source(s.inputs[p], root)
            if chain is not None:
                chains.setdefault(chain[-1], []).append((p, chain))
        # one value per loop, the largest that fits (two placed in one slab would overlap)
        for m, uses in sorted(chains.items(), key=lambda mu: -mu[0].size):
            if (
                m in placed
                or m in found
                or m in escaping
                or m.size > length * row
                or m.dtype != s.dtype
                or not get_op(m.op).supports_out
                or not _only_feeds(m, uses, s, users, outputs)
            ):
                continue
            b0 = split_rows(s, options)
            for steps in _candidates(m, start, row, length, _batch_rows(s)):
                if _aligned(s, m, steps, uses, start, row, length, b0):
                    found[m] = (s, steps)
                    break
            if m in found:
                break
    return found


def _candidates(m: Node, start: int, row: int, length: int, rows: tuple | None) -> list[tuple]:
    """Where m may lie in the rows, as steps from the slab: at the rows' start (a projection as
    wide as the rows: FastLSTM's 4H, xs row (t, b) the loop's row (t, b)); then, for one
    narrower than the loop's batch rows `rows` (n, wide) (_batch_rows), a strided window
    (ld = wide) over the last columns of each batch row -- xs row (t, b) inside the loop's row
    (t, b), so each batch half's xs lie in its own rows (scan_split.SplitRunner._apart: the
    built-in GRU's 3H under its 4H rows, MGU's 2H under 3H); else contiguous at the rows' end
    (each step's xs at or past its row)."""
    out = [(("getitem", (slice(start, start + m.size),)), ("reshape", m.shape))]
    if rows is not None and m.ndim and m.size == length * rows[0] * m.shape[-1]:
        (n, wide), width = rows, m.shape[-1]
        if width < wide and n * wide == row:
            window = (("getitem", (slice(start, start + length * row),)),)
            window += (
                ("reshape", (length * n, wide)),
                ("getitem", (slice(None), slice(-width, None))),
            )
            if m.shape != (length * n, width):
                window += (("reshape", m.shape),)
            out.append(window)
    end = start + length * row - m.size
    if end != start:
        out.append((("getitem", (slice(end, end + m.size),)), ("reshape", m.shape)))
    return out


def _batch_rows(s: Node) -> tuple[int, int] | None:
    """(n, wide): a loop whose rows a step writes (its ys not shifted into blocks of their own,
    scan_ir.ys_places) are one ys of shape (n, wide) -- n batch rows, batch-major -- else None
    (several ys lie one after another in a step's rows: no row of them is a batch row)."""
    body, nc = s.attrs.get("body"), s.attrs.get("n_carry")
    if body is None or nc is None:
        return None
    moved = {j for j, _ in s.attrs.get("shifted", ())}
    kept = [o.shape for j, o in enumerate(body.outputs[nc:]) if j not in moved]
    return kept[0] if len(kept) == 1 and len(kept[0]) == 2 else None


def _chain_to_source(x: Node, root: dict[Node, Node]) -> list[Node] | None:
    """[x, ..., m]: x back to the computed value m it is a view of, or an elementwise op
    writable in place over (its input 0) of; None when x is not such a value."""
    chain = [x]
    while True:
        v = chain[-1]
        if v.op in PSEUDO:
            return None
        op = get_op(v.op)
        if op.view or (
            op.elementwise
            and op.supports_out
            and 0 in op.inplace_inputs(v)
            and v.inputs[0].shape == v.shape
            and v.inputs[0].dtype == v.dtype
            and v.inputs.count(v.inputs[0]) == 1
        ):
            chain.append(v.inputs[0])
        else:
            return chain if len(chain) > 1 and root[v] is v else None


def _only_feeds(m: Node, uses: list, s: Node, users: dict, outputs: set) -> bool:
    """Every read of m (through the chains) is a chain's next node or the loop's own operand."""
    inner = {v for _, chain in uses for v in chain}
    heads = {chain[0] for _, chain in uses}
    for v in inner:
        if v in outputs:
            return False
        for u in users.get(v, ()):
            if u is s:
                if v not in heads:
                    return False
            elif u not in inner:
                return False
    ops = [k for k, i in enumerate(s.inputs) if i in inner]
    return sorted(ops) == sorted(p for p, _ in uses)


def _aligned(
    s: Node, m: Node, steps: tuple, uses: list, start: int, row: int, length: int, b0: int | None
) -> bool:
    """On a dummy slab: m's region, each operand's (views replayed, in-place ops over their
    input) has step t's data where the loop writes no row before step t reads it
    (ops.registry.rows_writable); given the batch split's first half `b0`, no batch half's
    operand rows in the other half's ys rows (slab_halves.crosses)."""
    slab = np.empty(s.shape, s.dtype)
    reverse = bool(s.attrs.get("reverse"))
    region = apply_steps(slab, steps)
    if region is None or not (region.flags.c_contiguous or region.strides[-1] == slab.itemsize):
        return False
    item = slab.itemsize
    lo = slab.__array_interface__["data"][0] + start * item
    for _, chain in uses:
        r = region
        for v in reversed(chain[:-1]):
            if get_op(v.op).view:
                try:
                    r = np.asarray(get_op(v.op).forward(r, **v.attrs))
                except Exception:  # noqa: BLE001 - a view op that cannot run on the dummy
                    return False
                if not np.shares_memory(r, region):
                    return False
        if r.ndim == 0 or r.shape[0] != length or r.size == 0:
            return False
        (a0, e0), (a1, e1) = bounds(r[0]), bounds(r[length - 1])
        if not rows_writable((a0, a1), (e0, e1), (0, length - 1), lo, row * item, length, reverse):
            return False
        if b0 is not None and crosses(slab, r, s, start, row, b0):
            return False
    return True


def _check_slots(
    c: Node, region: np.ndarray, placed: dict, concats: set, options: PlanOptions
) -> None:
    base = region if region.base is None else region.base
    for q in [q for q, (parent, _) in placed.items() if parent is c]:
        sub = apply_steps(region, placed[q][1])
        if (
            sub is None
            or not np.shares_memory(sub, base)
            or not cheap_strides(sub, lowering_size(base.shape, base.nbytes), options)
        ):
            del placed[q]
            if q in concats:  # its own pieces stay placed, into q's own storage
                _check_slots(q, np.empty(q.shape, q.dtype), placed, concats, options)
        elif q in concats:
            _check_slots(q, sub, placed, concats, options)
    if not any(parent is c for parent, _ in placed.values()):
        concats.discard(c)


def apply_steps(region: np.ndarray, steps: tuple) -> np.ndarray | None:
    for kind, arg in steps:
        if kind == "getitem":
            region = region[arg]
        else:
            try:
                region = region.view()
                region.shape = arg  # raises instead of copying
            except (AttributeError, ValueError):
                return None
    return region if region.flags.writeable else None


def bounds(a: np.ndarray) -> tuple[int, int]:
    lo = hi = a.__array_interface__["data"][0]
    for n, s in zip(a.shape, a.strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + a.itemsize


def overlap(a: np.ndarray, ab: tuple, b: np.ndarray, bb: tuple) -> bool:
    if a.size == 0 or b.size == 0 or ab[1] <= bb[0] or bb[1] <= ab[0]:
        return False
    if a.flags.c_contiguous and b.flags.c_contiguous:
        return True
    try:
        return bool(np.shares_memory(a, b, max_work=10_000))
    except _TooHard:
        return True


class RegionStatic(WalkStatic):
    """Also: which concat pieces are placed into their slot, direct reads, view children."""

    def __init__(self, graph: Graph, options: PlanOptions):
        super().__init__(graph, options)
        self.placed, self.placed_concats, self.slot_of = placements(graph, self.root, options)
        # loops with a time-batched input computed into their own rows (xs_in_slab)
        slabs = (
            slab_placements(graph, self.root, self.placed, self.escaping, options)
            if options.xs_in_slab
            else {}
        )
        self.placed.update(slabs)
        self.slab_roots = {s for s, _ in slabs.values()}
        # direct reads: by non-view readers (a placed concat reads nothing it does not copy)
        placed_slots: dict[Node, set[int]] = {}
        for q, j in self.slot_of.items():
            if q in self.placed:
                placed_slots.setdefault(self.placed[q][0], set()).add(j)
        self.reads: dict[Node, int] = {}
        self.children: dict[Node, list[Node]] = {}
        for k, n in enumerate(graph.nodes):
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


class RegionWalk(Walk):
    """The plain walk plus regions: placement roots opened at their first placed piece, and
    in place into any dead region (checked against the regions still to be read)."""

    Static = RegionStatic

    def __init__(self, graph: Graph, static: RegionStatic, scratch, force: set):
        super().__init__(graph, static, scratch, force)
        self.plan.placed_concats = set(static.placed_concats)
        self.plan.slab_roots = set(static.slab_roots)
        self.region: dict[Node, np.ndarray] = {}  # value -> view of its storage's dummy
        self.base: dict[Node, np.ndarray] = {}  # storage -> dummy array
        self.grid: dict[Node, tuple[int, int]] = {}  # storage -> (address, bucket bytes)
        # storage -> address bucket -> [(region, bounds, produced, last read)]
        self.entries: dict[Node, dict[int, list]] = {}
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
        self.plan.placed_slots = {
            (static.placed[q][0], j) for q, j in static.slot_of.items() if q in static.placed
        }

    def _node(self, n: Node, k: int) -> None:
        plan = self.plan
        for r in self.roots_at.get(k, ()):
            self._open_root(r, k)
        if n in plan.placed:
            r, steps = plan.placed[n]
            plan.storage[n] = r
            if n not in self.s.placed_concats:
                self._produce(n, k, apply_steps(self.base[r], steps))
        elif n in self.s.slab_roots:  # opened at its input's placement: the loop writes it now
            self._produce(n, k, self.base[n])
        elif n not in plan.placed_concats:  # (a placement root: opened at its first piece)
            self._compute(n, k)

    def _new_storage(self, st: Node, k: int, fresh: bool) -> None:
        super()._new_storage(st, k, fresh)
        base = self.base[st] = np.empty(st.shape, st.dtype)
        self.grid[st] = (base.__array_interface__["data"][0], max(1, -(-base.nbytes // 64)))

    def _open_root(self, r: Node, k: int) -> None:
        """A placement root: its storage exists from its first placed piece on, and holds every
        value placed in it (transitively) and their views."""
        escaping = r in self.s.escaping or r in self.force or r in self.root_escapes
        self._new_storage(r, k, fresh=escaping)
        plan = self.plan
        for q, (root, _) in plan.placed.items():
            if root is r:
                plan.release_at[r] = max(plan.release_at[r], self.s.last_use.get(q, k))
        if r in self.s.slab_roots:
            return  # a loop's result: produced when the loop runs
        # the placed concats' data (the root's and nested ones') counts as produced now
        self._produce(r, k, self.base[r])
        for q, (root, steps) in plan.placed.items():
            if root is r and q in self.s.placed_concats:
                plan.storage[q] = r
                self._produce(q, k, apply_steps(self.base[r], steps))

    def _produced(self, n: Node, k: int, over: Node | None) -> None:
        self._produce(n, k, self.base[n] if over is None else self.region[over])

    def _can_overwrite(self, n: Node, i: Node, k: int) -> bool:
        plan = self.plan
        st = plan.storage.get(i)
        if st is None or i.shape != n.shape or i.dtype != n.dtype or n.inputs.count(i) != 1:
            return False
        if (
            st in plan.fresh
            and st not in plan.placed_concats
            and (st.ndim == 0 or not get_op(st.op).supports_out)
        ):
            return False  # an op's own result may alias its inputs, or be a NumPy scalar
        r = self.region.get(i)
        if r is None or not r.flags.writeable or not np.shares_memory(r, self.base[st]):
            return False
        st_bytes = lowering_size(st.shape, st.nbytes)
        if not cheap_strides(r, st_bytes, self.options, escaping=n in self.s.escaping):
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


register_region_walk(RegionWalk)
