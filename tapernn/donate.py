"""Donated inputs (PlanOptions.dz_in_gates, issue 16): a TrainingPair's backward may write its
reverse loop's slab (final dh, dc | the T rows of dZ) over the prefix of the forward's saved
slab (final h, c | the T gate rows), which nothing reads once the loop has read each row.
Analyses only (the walk and codegen act on what they return):

- `donatable(graph, plan, n_saved)` (the forward): per backward input position j (the saved
  value j), how many leading elements of it no other output of the forward (kept or saved)
  reads; only a saved value computed into a fresh flat storage of its own qualifies.
- `donations(graph, root, donatable)` (the backward): loop node -> the input it is computed
  into (its first `size` elements): the loop's result fits in that prefix, the input's prefix is
  read only by the loop's xs (the runner checks every call that no xs row is written over
  before its step reads it -- row t inside the loop's row t, or behind it in a reverse loop:
  ops.registry.rows_writable --, else it writes a slab of its own: scan_run.writable_over_xs;
  checked here too, so the plan is what runs) or by nodes
  scheduled before the loop, and nothing returned is a view of it."""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node
from .ops.registry import PSEUDO, get_op, rows_writable


def _view(n: Node) -> bool:
    return n.op not in PSEUDO and get_op(n.op).view


def _values(v: Node, base: Node, indices: dict | None = None) -> np.ndarray | None:
    """The element indices of `base` (flat) that view `v` of it holds (None when unsure).
    `indices`: the flat index arrays made so far by size, shared by one caller's many asks
    (FastLSTM (32, 50, 256): 31 asks over 2 sizes; each made anew was ~18 % of the first
    call's CPU, 80 of 430 ms); the view chain only views them."""
    chain = []
    while v is not base:
        if not _view(v) or len(v.inputs) != 1:
            return None
        chain.append(v)
        v = v.inputs[0]
    flat = None if indices is None else indices.get(base.size)
    if flat is None:
        flat = np.arange(base.size)
        flat.flags.writeable = False
        if indices is not None:
            indices[base.size] = flat
    arr = flat.reshape(base.shape)
    try:
        for n in reversed(chain):
            arr = np.asarray(get_op(n.op).forward(arr, **n.attrs))
    except (TypeError, ValueError, IndexError, KeyError, AttributeError):
        return None
    return arr


def _lowest(v: Node, base: Node, indices: dict | None = None) -> int:
    """The lowest element index of `base` (flat) that view `v` of it covers (0 when unsure)."""
    arr = _values(v, base, indices)
    if arr is None:
        return 0
    return base.size if arr.size == 0 else int(arr.min())


def _rows_aligned(v: Node, base: Node, s: Node, indices: dict | None = None) -> bool:
    """Whether xs view `v` of `base` has its rows where loop s, computed into base's leading
    elements, writes no row before the step that reads them (ops.registry.rows_writable:
    row t inside the loop's row t, or behind it in step order), so the runner writes over it
    directly (it checks this every call, and otherwise writes a slab of
    its own: a per-call array the plan would not count)."""
    rule = get_op(s.op).rows
    rows = rule(s) if rule is not None else None
    arr = _values(v, base, indices)
    if rows is None or arr is None or arr.ndim == 0 or arr.size == 0:
        return False
    _, start, row, length = rows
    if arr.shape[0] != length:
        return False
    flat = arr.reshape(length, -1)
    return rows_writable(
        flat.min(axis=1),
        flat.max(axis=1) + 1,
        np.arange(length),
        start,
        row,
        length,
        bool(s.attrs.get("reverse")),
    )


def donatable(graph: Graph, plan, n_saved: int) -> dict[int, int]:
    """Backward input position -> the number of leading elements of that saved value which no
    other output of the forward reads (positions absent: not donatable)."""
    outs = graph.outputs
    first = len(outs) - n_saved
    out: dict[int, int] = {}
    indices: dict = {}
    for j in range(n_saved):
        o = outs[first + j]
        if (
            o.op in PSEUDO
            or _view(o)
            or o.ndim != 1
            or outs.count(o) != 1
            or plan.storage.get(o) is not o
            or o not in plan.fresh
        ):
            continue
        limit = o.size
        for q in outs:
            if q is not o and plan.storage.get(q) is o:
                limit = min(limit, _lowest(q, o, indices))
        out[j] = limit
    return out


def donations(graph: Graph, root: dict[Node, Node], donate: dict[int, int]) -> dict[Node, Node]:
    """Loop node -> input node it may be computed into (see the module docstring)."""
    pos = {n: k for k, n in enumerate(graph.nodes)}
    found: dict[Node, Node] = {}
    indices: dict = {}
    for j, limit in donate.items():
        if j >= len(graph.inputs):
            continue
        inp = graph.inputs[j]
        if inp.ndim != 1 or graph.inputs.count(inp) != 1:
            continue
        loops = [
            s
            for s in graph.nodes
            if s.op == "scan"
            and s not in found
            and s.ndim == 1
            and s.dtype == inp.dtype
            and s.size <= min(limit, inp.size)
        ]
        for s in sorted(loops, key=lambda s: -s.size):
            if _only_early_or_xs(graph, root, pos, inp, s, indices):
                found[s] = inp
                break
    return found


def _only_early_or_xs(
    graph: Graph, root: dict, pos: dict, inp: Node, s: Node, indices: dict
) -> bool:
    """Whether every read of inp's first s.size elements is by s's xs or before s, and no
    returned value is a view of inp reaching into them."""
    size = s.size
    nc, nx = s.attrs["n_carry"], s.attrs["n_xs"]
    for o in graph.outputs:
        if root.get(o) is inp and _lowest(o, inp, indices) < size:
            return False
    for m in graph.nodes:
        if m.op in PSEUDO or _view(m):
            continue
        for p, v in enumerate(m.inputs):
            if root.get(v) is not inp:
                continue
            if m is s and nc <= p < nc + nx:
                if _rows_aligned(v, inp, s, indices):
                    continue
                return False
            if m is not s and pos[m] < pos[s]:
                continue
            if _lowest(v, inp, indices) < size:
                return False
    return True


def tail_gemms(
    graph: Graph, root: dict[Node, Node], donated: dict[Node, Node], keep: frozenset, min_bytes: int
) -> dict[Node, tuple[Node, int]]:
    """Returned GEMMs `v @ W` computed over the dead tail of a donated loop's rows (issue 19:
    the input gradient dZ @ W_x over the dZ rows it reads, `tail_matmul`): matmul node ->
    (the donated input, the element offset its result starts at). `v` a C-contiguous (n, K)
    view of the loop's result, or the first columns of rows K apart (GRU's dz_r dz_z dz_n of
    its rows), K >= 2D: the result (n, D) then fits in the last n*D elements of v's span,
    written in row blocks from the last, each over rows already read; the loop
    is computed into saved value j of `keep` (held by a kept forward output anyway, so the
    result that lies there keeps nothing alive that was not); the result's storage is its
    own (returned, not read in place); at least `min_bytes`. The caller schedules it after
    every other read of the loop's result and of the input (`last_reads`)."""
    found: dict[Node, tuple[Node, int]] = {}
    taken: set[Node] = set()
    escaping = {root.get(o, o) for o in graph.outputs}
    for m in graph.nodes:
        if m.op != "matmul" or m.ndim != 2 or m.nbytes < min_bytes or m not in escaping:
            continue
        v, w = m.inputs
        s = root.get(v)
        inp = donated.get(s)
        if inp is None or s in taken or graph.inputs.index(inp) not in keep:
            continue
        if root.get(w) in (s, inp) or m.dtype != s.dtype or v.dtype != m.dtype:
            continue
        arr = _values(v, s)
        if arr is None or arr.ndim != 2 or arr.size == 0:
            continue
        n, width = arr.shape
        lo = int(arr[0, 0])
        k = int(arr[1, 0]) - lo if n > 1 else width  # (row stride: GRU's dz columns of its rows)
        if m.shape != (n, w.shape[1]) or k < width or k < 2 * m.shape[1]:  # (K >= 2D)
            continue
        rows = lo + k * np.arange(n)[:, None] + np.arange(width)[None, :]
        if not np.array_equal(arr, rows) or lo + n * k > s.size:
            continue
        found[m] = (inp, lo + n * k - m.size)
        taken.add(s)
    return found


def last_reads(graph: Graph, tails: dict[Node, tuple[Node, int]]) -> Graph:
    """`graph` with each tail GEMM (and every node depending on it) moved after the other
    nodes, in their order: it then runs after every other read of the rows it writes over."""
    if not tails:
        return graph
    late: set[Node] = set(tails)
    for n in graph.nodes:
        if any(i in late for i in n.inputs):
            late.add(n)
    nodes = [n for n in graph.nodes if n not in late] + [n for n in graph.nodes if n in late]
    return Graph(nodes, graph.inputs, graph.outputs, graph.meta)


def tail_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, matmul=np.matmul) -> np.ndarray:
    """out = a @ b where `out` (n, D) lies over the last n*D elements of `a`'s (n, K) span,
    K > D (tail_gemms), in two GEMMs: the last rows first into a temporary (they overlap the
    rows they read), then every other row in one block, which writes elements n*(K-D) +
    [0, hi*D): past hi*K, rows that block reads, when hi <= n*(K-D)/K. So the temporary holds
    n - floor(n*(K-D)/K) rows, ceil(n*D/K) (1/4 of `out` for an LSTM's dZ) and lives only in
    this call. (A geometric series of blocks from a temporary of n/64 rows, as before, ran
    ~log(n)/log(K/(K-D)) GEMMs whose first ones were too small for the BLAS's rate: (32, 50,
    256) f32, 25 + 75 + 300 + 1200 rows 3.5 ms at two OpenBLAS threads, 400 + 1200 3.3 ms.)"""
    n, k = a.shape[0], a.strides[0] // a.itemsize  # (rows k apart: a may be their first columns)
    d = out.shape[1]
    hi = _block_rows(n, k, d)
    top = matmul(a[hi:], b)
    out[hi:] = top
    del top
    if hi > 0:
        matmul(a[:hi], b, out=out[:hi])
    return out


def _block_rows(n: int, k: int, d: int) -> int:
    """The rows tail_matmul computes in place (its second GEMM): the others go through its
    temporary first."""
    return n * (k - d) // k


def tail_temp_bytes(m: Node, root: dict[Node, Node]) -> int:
    """Bytes of the temporary `tail_matmul` makes for tail GEMM `m` (plan.tail_of; `root`: the
    plan's view roots), live during its call only: its result's rows past `_block_rows` (the
    whole result when the rows' layout is not known)."""
    v = m.inputs[0]
    arr = _values(v, root.get(v, v))
    if arr is None or arr.ndim != 2 or arr.size == 0:
        return m.nbytes
    n, width = arr.shape
    k = int(arr[1, 0] - arr[0, 0]) if n > 1 else width
    d = m.shape[1]
    return (n - _block_rows(n, k, d)) * d * m.dtype.itemsize
