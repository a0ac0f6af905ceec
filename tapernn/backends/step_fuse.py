"""Direct writes into the saved slab row for translated step loops (issue 19, BENCHMARKS.md
"hfuse"; PlanOptions.step_direct): a step program ends its step by concatenating the gate
values into the ys row that BPTT keeps (`np_concatenate((p0, p1, ...), axis=1, out=w)`), each
part made before by a gate kernel into a scratch buffer -- one more pass over the step's gate
memory. This pass makes each part's kernel write its columns of the row itself (`K(.., out)`
becomes `K(.., w[:, o:o + n])`; a part that is a column slice of a kernel's output splits that
kernel by columns, one call per part) and drops the part's copy. Same kernels on the same
elements in the same order: the same bits (tests/test_step_fuse.py).

Sound when (all checked here, or at call time by `Halves.choose` for the memory the
translator cannot see): the kernel is a generated elementwise one storing through its `out`
rows (an in-place kernel's own-row store would take its scalar fallback nest: other bits); the
scratch buffer's values are read afterwards only through the part; the part is not a carry nor
written again; no statement between the moved write and the concatenate reads the row; and
no array the statements in that window read (carries, xs not copied first, invariants) shares
memory with the row (`checks`: tested per call, the Python loop runs when one does)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

DIRECT = [True]  # PlanOptions.step_direct unless off here (tools/ab_fuse.py's "old" arm)
CALLS = [0]  # half loops run with direct writes so far (tests)
REFUSED = [0]  # split calls whose direct writes an overlap refused (the Python halves ran)
_WORD = re.compile(r"\b[A-Za-z_]\w*\b")
_ROWS = re.compile(r"\br(\d+) = c_row\(x(\d+), (i0|0)\)")
_PLAIN = re.compile(r"\bx(\d+)\[([^\]]*)\]")
_kinds: dict[Any, Any] = {}  # per kernel dispatcher: its operands' column kinds, or None


def kinds(disp: Any) -> list[str] | None:
    """Per operand of a generated 2-D kernel `disp`: "col" (read at the output's column: a
    column slice of it goes with a column slice of the output) or "fixed" (a broadcast column);
    None when it is not one this pass may move: not generated, not 2-D, or storing through an
    operand's row (in-place)."""
    if disp in _kinds:
        return _kinds[disp]
    out = None
    try:
        text = Path(sys.modules[disp.py_func.__module__].__file__).read_text()
        head = re.search(r"^def kernel\((.*)\):$", text, re.MULTILINE)
        params = [p.strip() for p in head.group(1).split(",")] if head else []
        fast = text.split("    else:")[0]
        if params and params[-1] == "out" and "ro[i1] = " in fast and "return out" in text:
            n = len(params) - 1
            found: dict[int, str] = {}
            for _, k, _ in _ROWS.findall(fast):
                found[int(k)] = "col"
            body = fast.split("for i1 in range(out.shape[1]):", 1)[-1]
            for k, sub in _PLAIN.findall(body):
                found.setdefault(int(k), "col" if "i1" in sub else "fixed")
                if "i1" in sub:  # (a 1-D operand along the columns: not sliced here)
                    found[int(k)] = "bad"
            out = [found.get(k, "fixed") for k in range(n)]
            if "bad" in out:
                out = None
    except (OSError, KeyError, AttributeError, TypeError):
        out = None
    _kinds[disp] = out
    return out


def _cols(index: Any, rows_width: tuple[int, int] | None) -> tuple[int, int] | None:
    """(a, b) when `index` takes every row and columns a:b (step 1) of a 2-D value of known
    (rows, width)."""
    if rows_width is None or not isinstance(index, tuple) or len(index) != 2:
        return None
    r, c = index
    if not (isinstance(r, slice) and isinstance(c, slice)) or r.step not in (None, 1):
        return None
    if c.step not in (None, 1) or r.indices(rows_width[0]) != (0, rows_width[0], 1):
        return None
    a, b, _ = c.indices(rows_width[1])
    return (a, b) if b > a else None


def plan(stmts: list, defaults: dict, params: dict, keep: frozenset = frozenset()) -> dict:
    """The rewrite of parsed step statements `stmts` (step_loop's: (kind, out, fn, args); a
    concat's args (parts, axis, dst)) for `defaults` (bound values) and `params` ({name:
    "carry" | "xs" | "late" | "inv" | "ys" | "hoisted"}): {"calls": {statement: [its
    replacement lines]}, "binds": {statement: line}, "concat": {statement: [(part, offset)
    still copied]}, "checks": [(dst ys name, [(column, columns, [params whose memory must not
    overlap those columns of the row])])]}. `keep`: (ys position, column) of parts to copy."""
    from numba.core.registry import CPUDispatcher

    made: dict[str, int] = {}  # value name -> the statement that made it
    root: dict[str, str] = {}  # value name -> the buffer or parameter its memory is
    shape: dict[str, tuple | None] = {}  # value name -> (rows, width) when known
    for i, (kind, out, fn, args) in enumerate(stmts):
        made[out] = i
        if kind == "index":
            root[out] = root.get(args[0], args[0])
            c = _cols(defaults.get(fn), shape.get(args[0]))
            shape[out] = (shape[args[0]][0], c[1] - c[0]) if c else None
        elif (
            kind == "call"
            and args
            and (isinstance(defaults.get(fn), CPUDispatcher) or args[-1].startswith("out="))
        ):  # (a kernel's output, a ufunc's out=: that buffer)
            last = args[-1].removeprefix("out=")
            root[out] = root.get(last, last)
            v = defaults.get(last)
            shape[out] = v.shape if isinstance(v, np.ndarray) and v.ndim == 2 else shape.get(last)
        else:
            root[out] = out
            shape[out] = None
    reads = [_reads(s) for s in stmts]
    written = [_written(s) for s in stmts]
    result: dict = {"calls": {}, "binds": {}, "concat": {}, "checks": []}
    for c, (kind, _, _, args) in enumerate(stmts):
        if kind != "concat":
            continue
        parts, axis, dst = args
        widths = [shape.get(p) for p in parts]
        if params.get(dst) != "ys" or axis not in (1, -1) or any(w is None for w in widths):
            continue
        offsets = [int(o) for o in np.cumsum([0] + [w[1] for w in widths[:-1]])]
        # proposals by producer statement: [(part, offset, width, slice statement, columns)]
        by: dict[int, list] = {}
        for p, o, w in zip(parts, offsets, widths):
            i = made.get(p, c)
            if i >= c or parts.count(p) != 1:
                continue
            kind_i, _, fn_i, args_i = stmts[i]
            if kind_i == "index" and made.get(args_i[0], c) < i:
                q = made[args_i[0]]
                cols = _cols(defaults.get(fn_i), shape.get(args_i[0]))
                if stmts[q][0] == "call" and cols is not None:
                    by.setdefault(q, []).append((p, o, w[1], i, cols))
            elif kind_i == "call":
                by.setdefault(i, []).append((p, o, w[1], None, None))
        done, window = set(), []
        for j, props in by.items():
            lines = _lines(stmts[j], props, dst, defaults)
            ys_pos = [n for n, k in params.items() if k == "ys"].index(dst)
            if lines is None or any((ys_pos, o) in keep for _, o, *_ in props):
                continue
            mine = {p for p, *_ in props}
            slices = {s for _, _, _, s, _ in props if s is not None}
            # the buffer's values are read after the producer only through the moved parts
            # (a split kernel's output only by the parts' slice statements)
            buffer = {n for n in made if root.get(n) == root[stmts[j][1]]} - mine
            later = [k for k in range(j + 1, len(stmts)) if k not in slices]
            bad = any(reads[k] & buffer for k in later)
            bad = bad or any(written[k] & mine for k in later if k != c)  # (not written again)
            bad = bad or (stmts[-1][0] == "return" and bool(reads[-1] & mine))  # (nor carried)
            rooted = {n for n in made if root.get(n) == dst} | {dst}
            bad = bad or any(reads[k] & rooted for k in range(j, c))  # (the row not read first)
            if bad:
                continue
            result["calls"][j] = lines
            seen = set()  # (the params read from the moved write to the concatenate)
            for k in range(j, c + 1):
                seen |= {r for r in reads[k] if params.get(r) in ("carry", "xs", "inv")}
            for p, o, n, s, _ in props:
                done.add(p)
                if s is not None:
                    result["binds"][s] = f"{p} = {dst}[:, {o}:{o + n}]"
                window.append((o, n, sorted(seen)))
        if done:
            result["concat"][c] = [(p, o) for p, o in zip(parts, offsets) if p not in done]
            result["checks"].append((dst, window))
    return result


def _reads(stmt: tuple) -> set[str]:
    kind, _, fn, args = stmt
    if kind == "concat":
        return set(args[0]) | {args[2]}
    words: set[str] = set()
    for a in args:
        words |= set(_WORD.findall(a.split("=")[-1]))
    return words - {fn}


def _written(stmt: tuple) -> set[str]:
    """The values a statement writes into (a kernel's out, a ufunc's out=)."""
    kind, _, _, args = stmt
    if kind != "call" or not args:
        return set()
    return {a[4:] for a in args if a.startswith("out=")} | {args[-1]}


def _lines(stmt: tuple, props: list, dst: str, defaults: dict) -> list[str] | None:
    """The producer's call(s) writing each proposed part into dst's columns, or None: a part
    that is the kernel's whole output gets it as `out`; parts that are column slices of it
    get one call each over those columns of the operands read at the output's column."""
    _, out, fn, args = stmt
    ks = kinds(defaults.get(fn))
    if ks is None or len(ks) != len(args) - 1 or args[-1] not in defaults:
        return None
    if any(s is None for *_, s, _ in props):
        if len(props) != 1:
            return None
        _, o, n, _, _ = props[0]
        return [f"{out} = {fn}({', '.join(args[:-1] + [f'{dst}[:, {o}:{o + n}]'])})"]
    if any("=" in a for a in args):
        return None
    lines = []
    for _, o, n, _, (a, b) in props:
        ins = [f"{x}[:, {a}:{b}]" if k == "col" else x for x, k in zip(args[:-1], ks)]
        lines.append(f"{fn}({', '.join(ins + [f'{dst}[:, {o}:{o + n}]'])})")
    return lines


def strided(loops: list, whole: tuple) -> bool:
    """Whether an array of the step loops' `rows` ((kind, position): translate's) in a call's
    `whole` (carries, xs, invariants, ys) has rows that are not contiguous: the loops' passes
    read them as C rows without a test of their own (numba_twin.either)."""
    arrays = dict(zip(("carry", "xs", "inv", "ys"), whole))
    return any(
        arrays[kind][k].strides[-1] != arrays[kind][k].itemsize for f in loops for kind, k in f.rows
    )


def overlaps(
    checks: list, whole: tuple, lo: int, hi: int, length: int, reverse: bool, at: dict | None = None
) -> set:
    """The (ys position, column) of the parts in `checks` (translate's: (ys position, [(first
    column, columns, [(kind, position[, the column block a pass loads])])])) whose columns of
    the ys rows, written early in a half's call over rows lo:hi, may share memory with an array
    read after the write (`whole`: the call's carries, xs, invariants and ys, whole batch), or
    that a pass loads other than as the very block it stores; empty when the writes are sound.
    A pass's checks have the ys position -1 - j (step_pass). Row t of an xs is compared with
    row t of the ys (the same offsets every step when their step strides agree; other steps'
    rows are written as before, in step order), a carry with the first step's row (later
    ones are the loop's own values); by integer arithmetic on the rows' addresses, once per
    (array, ys) pair a call; `at`: the call's arrays' addresses by id, kept by the caller for
    both halves' checks (each array's read once a call: ~2.5 us an `__array_interface__`)."""
    cs, xs, inv, ys = whole
    t = length - 1 if reverse else 0
    seen: dict = {}
    at = {} if at is None else at
    for j, window in checks:
        y = ys[j if j >= 0 else -1 - j]
        for _, _, names in window:
            for kind, k, *_ in names:
                if (j, kind, k) not in seen:
                    seen[(j, kind, k)] = _geometry(kind, k, cs, xs, inv, y, t, lo, hi, at)
    key = (id(checks), *seen.items())  # (the same geometry as a call before: its answer)
    if key in _answers:
        return set(_answers[key])
    hits: set = set()
    for j, window in checks:
        for o, n, names in window:
            for kind, k, *col in names:
                g = seen[(j, kind, k)]
                if isinstance(g, bool):
                    hit = g
                else:
                    d0, s0, s1, r, width = g
                    c = col[0] if col else 0
                    hit = _meet(d0 + (c - o) * s1, s0, s1, r, n if col else width, n, bool(col))
                if hit:
                    hits.add((j, o))
    if len(_answers) > 256:
        _answers.clear()
    _answers[key] = frozenset(hits)
    return hits


_answers: dict = {}  # overlaps' answers by checks and geometry


def _address(a: np.ndarray, at: dict) -> int:
    """a's first element's address (`at`: the call's, by id; the arrays are the call's, alive)."""
    found = at.get(id(a))
    if found is None:
        found = at[id(a)] = a.__array_interface__["data"][0]
    return found


def _geometry(kind, k, cs, xs, inv, y, t, lo, hi, at) -> tuple | bool:
    """(x row's address - y row's, row stride, item stride, rows, x's columns) of the compared
    rows, or whether they may share memory at all when their strides differ (`at`: the
    call's addresses of whole arrays, by id; a row block's is its array's plus the block's
    offset when it has all hi - lo rows)."""
    if kind == "inv" or (kind == "xs" and xs[k].strides[0] != y.strides[0]):
        return bool(np.may_share_memory(xs[k] if kind == "xs" else inv[k], y))
    a = xs[k] if kind == "xs" else cs[k]
    x, yr = (a[t, lo:hi] if kind == "xs" else a[lo:hi]), y[t, lo:hi]
    if x.ndim != 2 or x.strides != yr.strides or x.shape[0] != yr.shape[0]:
        return bool(np.may_share_memory(x, yr))
    if x.strides[1] != x.itemsize or max(x.shape[1], yr.shape[1]) * x.itemsize > abs(x.strides[0]):
        return bool(np.may_share_memory(x, yr))
    if x.shape[0] != hi - lo:  # (rows cut short by the arrays' ends: the views' own)
        ax, ay = x.__array_interface__["data"][0], yr.__array_interface__["data"][0]
    else:
        ax = _address(a, at) + (t * a.strides[0] if kind == "xs" else 0) + lo * x.strides[0]
        ay = _address(y, at) + t * y.strides[0] + lo * yr.strides[0]
    return (ax - ay, x.strides[0], x.strides[1], x.shape[0], x.shape[1])


def _meet(d: int, s0: int, s1: int, rows: int, nx: int, ny: int, same_ok: bool) -> bool:
    """Whether blocks of `rows` rows (row stride s0, item stride s1) of nx and ny columns, the
    first starting d bytes after the second, share an element -- other than the same (row,
    column) of both when `same_ok` (d == 0, nx == ny): x's (i, a) is y's (i', b) iff
    d = (i' - i) * s0 + (b - a) * s1 with |i' - i| < rows, -nx < b - a < ny."""
    if same_ok and d == 0 and nx == ny:
        return False
    for i in {d // s0, -(-d // s0)} if s0 else {0}:
        rest = d - i * s0
        if abs(i) < rows and rest % s1 == 0 and -nx < rest // s1 < ny:
            return True
    return False
