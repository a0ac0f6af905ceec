"""An independent check of a BufferPlan: rebuilds every value's region of its storage on dummy
arrays and its live interval from the tape, then asserts no two values of different data share
memory while both are live (in-place handover excepted), that buffers shared by storages are
never shared while both are live, and that returned values never live in a preallocated buffer."""

from itertools import pairwise

import numpy as np

from tapernn import PlanOptions
from tapernn.memory import inplace_candidates
from tapernn.ops.registry import get_op

PSEUDO = ("input", "constant")

# small graphs planned as if they were large (production writes strided regions only into
# storages of 1 MiB+ with runs of 256+ elements): the tests reach those paths explicitly
ANY_SIZE = PlanOptions(strided_min_bytes=0, strided_min_run=1)


def _view(n):
    return n.op not in PSEUDO and get_op(n.op).view


def _reads(loop, v):
    """Whether `loop` reads `v` (through views)."""
    todo = list(loop.inputs)
    while todo:
        i = todo.pop()
        if i is v:
            return True
        if _view(i):
            todo.extend(i.inputs)
    return False


def check_plan(graph, plan, regions=None):
    """Returns the number of in-place nodes (including writes into regions of larger values);
    fills `regions` (if given) with each value's region of a dummy array shaped like its
    storage."""
    nodes = graph.nodes
    N = len(nodes)
    pos = {n: k for k, n in enumerate(nodes)}
    slots = {}
    for c, j in plan.placed_slots:
        slots.setdefault(c, set()).add(j)
    reads = {}
    for k, n in enumerate(nodes):
        if n.op in PSEUDO or _view(n):
            continue
        for j, i in enumerate(n.inputs):
            if j not in slots.get(n, ()):
                reads[i] = k
    for o in graph.outputs:
        reads[o] = N
    base, region, family, start = {}, {}, {}, {}
    for st in set(plan.storage.values()):
        base[st] = np.empty(st.shape, st.dtype)
    # regions: placed values and placed concats first (their storage exists before them)
    for q, (r, steps) in plan.placed.items():
        a = base[r]
        for kind, arg in steps:
            a = a[arg] if kind == "getitem" else a.reshape(arg)
        assert np.shares_memory(a, base[r]), f"slot of {q} is not a view of its concat"
        region[q] = a
    for q, (r, _) in plan.placed.items():
        family[q] = r
    for c in plan.placed_concats:
        start[c] = plan.alloc_at[plan.storage[c]]
        family[c] = plan.storage[c]
    for k, n in enumerate(nodes):
        if n.op in PSEUDO:
            continue
        st = plan.storage.get(n)
        if _view(n):
            if n.inputs[0] in region:
                a = region[n.inputs[0]]
                r = np.asarray(get_op(n.op).forward(a, **n.attrs))
                if np.shares_memory(r, a):
                    region[n] = r
                    family[n] = family[n.inputs[0]]
                    start[n] = start[n.inputs[0]]
            continue
        assert st is not None, f"{n} has no storage"
        if n in plan.inplace:
            i = plan.inplace[n]
            assert i in [n.inputs[p] for p in inplace_candidates(n)], "op does not allow it"
            assert plan.storage[i] is st and i.shape == n.shape
            region[n] = region[i]
            for j in n.inputs:  # no other operand overlaps what is overwritten
                if j is not i and j in region and plan.storage.get(j) is st:
                    assert not np.shares_memory(region[j], region[i]), f"{n} reads its output"
        elif n in plan.placed:
            pass
        else:
            assert plan.storage[n] is n
            region[n] = base[n]
        # a placed piece belongs to its concat's data; anything else is new data
        family.setdefault(n, n)
        start.setdefault(n, k)
    spans = []
    for v, reg in region.items():
        if v.op in PSEUDO or v not in start:
            continue
        end = reads.get(v, start[v])
        spans.append((plan.storage[v], reg, start[v], end, family[v], v))
    by_storage = {}
    for s in spans:
        by_storage.setdefault(s[0], []).append(s)
    for st, group in by_storage.items():
        for x in range(len(group)):
            for y in range(x + 1, len(group)):
                _, ra, sa, ea, fa, a = group[x]
                _, rb, sb, eb, fb, b = group[y]
                if fa is fb or not np.shares_memory(ra, rb):
                    continue
                if sa > sb:
                    a, b, sa, sb, ea, eb, fa, fb = b, a, sb, sa, eb, ea, fb, fa
                ok = ea < sb or (ea == sb and (b in plan.inplace or fb in plan.inplace))
                # a loop's xs computed into its rows (xs_in_slab): the loop reads them as it
                # writes its slab (its runner checks that no row is written before it is read)
                ok = ok or (ea == sb and fb in plan.slab_roots and _reads(fb, a))
                assert ok, f"{a} (live {sa}..{ea}) and {b} ({sb}..{eb}) share memory"
    # storages sharing a buffer never live at once; scratch only during its node
    occupants = {}
    for st, b in plan.buffer_of.items():
        occupants.setdefault(b, []).append((plan.alloc_at[st], plan.release_at[st], st))
    for n, temps in plan.scratch_of.items():
        for b in temps:
            occupants.setdefault(b, []).append((pos[n], pos[n], ("scratch", n)))
    for b, occ in occupants.items():
        occ.sort(key=lambda s: (s[0], s[1]))
        for (s0, e0, a), (s1, e1, c) in pairwise(occ):
            assert e0 < s1, f"buffer {b}: {a} and {c} are live at once"
    assert set(occupants) == set(range(len(plan.buffers))), "a buffer nothing lives in"
    for o in graph.outputs:
        if o.op not in PSEUDO:
            assert plan.storage.get(o) not in plan.buffer_of, f"output {o} in a buffer"
    if regions is not None:
        regions.update(region)
    return len(plan.inplace)
