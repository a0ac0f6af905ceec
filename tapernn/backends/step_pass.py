"""One pass over memory for a run of a translated step's elementwise statements (issue 19,
BENCHMARKS.md "hfuse"; PlanOptions.step_direct): a step program calls its gate work as several
generated kernels and ufuncs one after another -- the add of the input projection over the
step GEMM's product, a sigmoid over three gates, a tanh, the cell update, the output -- each a
full pass over the step's rows. This pass cuts the run into column blocks of one width (an
elementwise op over k blocks is k ops over one block each) and writes ONE numba function that,
per row and column, runs every op's scalar lines (the kernels' own, from their generated
modules) in the step's order, handing a value to a later op in a register instead of through
memory, and stores only what is read after the run or kept (the ys rows). The same scalar
operations on the same elements in the same order (numba: no fast-math, no contraction): the
same bits (tests/test_step_fuse.py).

Sound when no memory the run writes is read by the run at another place: checked here for the
step's own values (one root buffer, other columns: the run ends before that op), and at call
time for the memory the translator cannot see (`checks`: a carry, xs or invariant the pass
reads against the ys rows it writes: step_fuse.overlaps, whole rows). The step kernel keeps the
pass's twin (`_pass<k>s`: the same scalar lines over rows of any stride) as a branch for
operands whose rows are not contiguous: no kernel call left in the step loop's module to type
and link again; the branch and the twin are compiled only where a root's numba type is not a C
array and the caller does not check its rows (numba_twin.either: the step loop's parameters'
rows are checked before each call, step_fuse.strided, so the built-in cells' loops never
compile them). A pass's column width is its argument `_w` (no size in the text)."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

_CALL = re.compile(r"^(?:(\w+) = )?([\w.]+)\((.*)\)$")
_INDEX = re.compile(r"^(\w+) = (\w+)\[(.*)\]$")
_COPY = re.compile(r"^(\w+)\[:, (\d+):\2 \+ (\w+)\.shape\[1\]\] = (\w+)$")
_SLICED = re.compile(r"^(\w+)\[:, (\d+):(\d+)\]$")
_UFUNC = {"np.add": "+", "np.subtract": "-", "np.multiply": "*"}
# parameters whose rows the step loop's caller checks, the same arrays' rows every step (a late
# xs's row buffer: C, the runner's; not the carries: from the second step, the step's values)
_SURE = ("xs", "late", "inv", "ys")
_scalar: dict[Any, Any] = {}
CALLS = [0]  # passes in half loops run so far (one per run and call; tests)
# the names the kernels' scalar lines use (numba_backend's module header, without the decorator)
HEADER = """
ONE_float32, ZERO_float32 = np.float32(1.0), np.float32(0.0)
ONE_float64, ZERO_float64 = np.float64(1.0), np.float64(0.0)
ONE_bool, ZERO_bool = True, False
"""


# a pass or its strided twin, the twin compiled only where the roots' types need it (its text's
# digest in the step loops' text: numba_twin.py's docstring)
EITHER = (
    "from tapernn.backends.numba_twin import either as _either  # "
    + hashlib.sha1((Path(__file__).parent / "numba_twin.py").read_bytes()).hexdigest()[:20]
)


def _header() -> str:
    from .vecmath import HEADER as vm

    return HEADER + EITHER + "\n" + vm


def scalar(disp: Any) -> tuple | None:
    """(operand rows {k: "i0" | "0"}, body lines, result name) of a generated 2-D kernel's row
    nest (its fast path), or None (not one: in-place stores, 1-D operands)."""
    if disp in _scalar:
        return _scalar[disp]
    out = None
    try:
        text = Path(sys.modules[disp.py_func.__module__].__file__).read_text()
        fast = text.split("    else:")[0]
        head, body = fast.split("for i1 in range(out.shape[1]):\n", 1)
        rows = {int(k): i for k, i in re.findall(r"\br\d+ = c_row\(x(\d+), (i0|0)\)", head)}
        lines = [s.strip() for s in body.split("\n") if s.strip()]
        # (an in-place kernel stores through its operand's row: the same memory as `out`)
        store = re.match(r"^r(?:o|\d+)\[i1\] = (\w+)$", lines[-1]) if lines else None
        for k in re.findall(r"\bx(\d+)\[i1\]", body):  # (a 1-D operand along the columns)
            rows[int(k)] = "vec"
        if store and not re.search(r"\bx\d+\[[^\]]*[^\[]i1", body.replace("[i1]", "")):
            out = (rows, lines[:-1], store.group(1))
    except (OSError, KeyError, AttributeError, ValueError):
        out = None
    _scalar[disp] = out
    return out


def _args(text: str) -> list[str]:
    """Top-level comma-separated arguments (slices inside brackets kept whole)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[(" and 1 or (ch in "])" and -1 or 0)
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


class _Values:
    """Each 2-D value's (root, first column, width): root a parameter or bound array name."""

    def __init__(self, shapes: dict):
        self.v: dict[str, tuple] = {n: (n, 0, s[1]) for n, s in shapes.items() if len(s) == 2}
        self.rows = {n: s[0] for n, s in shapes.items() if len(s) == 2}
        self.vec = {n: (n, 0, s[0]) for n, s in shapes.items() if len(s) == 1}

    def of(self, expr: str) -> tuple | None:
        m = _SLICED.match(expr)
        if m:
            base = self.v.get(m.group(1))
            a, b = int(m.group(2)), int(m.group(3))
            if base is None or not 0 <= a < b <= base[2]:
                return None
            return (base[0], base[1] + a, b - a)
        return self.v.get(expr)

    def index(self, out: str, x: str, idx: str) -> None:
        base = self.v.get(x)
        parts = [p.strip() for p in idx.split(",")]
        self.v.pop(out, None)
        if base is None or len(parts) != 2:
            return
        r, c = parts
        if r not in (":", f"0:{self.rows.get(base[0], -1)}"):
            return
        m = re.match(r"^(\d*):(\d*)$", c)
        if m is None:
            return
        a, b = int(m.group(1) or 0), int(m.group(2) or base[2])
        if 0 <= a < b <= base[2]:
            self.v[out] = (base[0], base[1] + a, b - a)


def fuse(
    body: list[str], defaults: dict, shapes: dict, kinds: dict, tail: str, keep=frozenset()
) -> tuple[list[str], list[str], list, set]:
    """(new step body lines, the module's pass functions, call-time checks [(ys name, [(column,
    columns, [param names])])], the parameters whose rows the caller checks) with each run of
    >= 2 elementwise statements, or a lone generated kernel's call, as one pass;
    `shapes`: the step's parameters' per-step shapes; `kinds`: step_fuse's parameter kinds;
    `tail`: the text after the body (the carries it binds are read after every run). The
    passes' roots that are step parameters (xs, invariants, ys rows) have contiguous
    rows in every call -- the caller checks (step_fuse.strided) -- so their numba types do not
    call for the twin; with "strided" in `keep` (the translator's) every root's type decides."""
    vals = _Values({**shapes, **{n: a.shape for n, a in defaults.items() if _is2d(a)}})
    notes = [_note(line, defaults, vals) for line in body]
    # runs: consecutive ops (index lines inside), one column block width, no misaligned access
    runs, cur = [], []
    for i, n in enumerate([*notes, None]):
        if n is not None and n[0] == "index":
            if cur:
                cur.append(i)
            continue
        if n is not None and _fits(cur, notes, n):
            cur.append(i)
            continue
        while cur and notes[cur[-1]][0] == "index":
            cur.pop()
        ops = [j for j in cur if notes[j][0] != "index"]
        if len(ops) >= 2 or (ops and _kernel_call(body[ops[0]], defaults)):
            runs.append(cur)  # (a lone kernel call too: its scalar lines, no callee to link)
        cur = [i] if n is not None else []
    new, funcs, checks, rows = [], [], [], set()
    sure = "strided" not in keep
    params = {n for n, k in kinds.items() if sure and k in _SURE and not _bound(n, body)}
    at = 0
    for r, run in enumerate(runs):
        new += body[at : run[0]]
        after = " ".join(body[run[-1] + 1 :]) + " " + tail
        lines, func, check, sured = _emit(r, run, body, notes, defaults, kinds, vals, after, params)
        new += lines
        funcs += func
        checks += check
        rows |= sured
        at = run[-1] + 1
    new += body[at:]
    return new, funcs, checks, rows


def _bound(name: str, body: list[str]) -> bool:
    """Whether a body line binds `name` anew (then not the parameter's rows)."""
    return any(re.match(rf"^(?:\w+, )*{name}(?:, \w+)*,? = ", line) for line in body)


def _note(line: str, defaults: dict, vals: _Values) -> tuple | None:
    """A body line as ("index",), an op (out, out expression, operand expressions, scalar,
    out (root, column, width), operands' (root, column, width) or text), or None (a breaker);
    `vals` follows the line's binding."""
    from numba.core.registry import CPUDispatcher

    m = _INDEX.match(line)
    if m and "(" not in line:
        vals.index(*m.groups())
        return ("index",)
    m = _COPY.match(line)  # (a concatenate's copy of a part into its columns: an op too)
    if m and m[3] == m[4]:
        x = vals.of(m[4])
        res = vals.of(f"{m[1]}[:, {m[2]}:{int(m[2]) + x[2]}]") if x is not None else None
        if res is None:
            return None
        return ("", m[1], [m[4]], ({0: "i0"}, ["v0 = r0[i1]"], "v0"), res, [x], None)
    m = _CALL.match(line)
    if not m:
        for name in re.findall(r"^(\w+) = ", line):
            vals.v.pop(name, None)
        return None
    out, fn, args = m.groups()
    a = _args(args)
    op = None
    if isinstance(defaults.get(fn), CPUDispatcher) and a:
        sc = scalar(defaults[fn])
        if sc is not None and len(a) == len(_params(defaults[fn])):
            op = (out, a[-1], a[:-1], sc)
    elif fn in _UFUNC and len(a) in (2, 3):
        op = (out, a[-1], a[:2], ({0: "i0", 1: "i0"}, [f"v0 = r0[i1] {_UFUNC[fn]} r1[i1]"], "v0"))
    res = vals.of(a[-1]) if a and (op is not None or fn == "_packed") else None
    if (
        op is not None and fn in _UFUNC and len(a) == 2
    ):  # (a new array: made before the pass, as np.empty)
        x = vals.of(a[0])
        res = (out, 0, x[2]) if out and x is not None and x[1] == 0 else None
        op = (*op[:1], out, *op[2:])
    if op is not None:
        rows = op[3][0]
        ins = [
            (vals.vec.get(x) if rows[k] == "vec" else vals.of(x)) if k in rows else x
            for k, x in enumerate(op[2])
        ]
        ok = res is not None and all(
            ins[k] is not None and ins[k][2] == res[2] for k in rows if k < len(ins)
        )
        fresh = fn in _UFUNC and len(a) == 2  # (its new array made like the first operand's root)
        op = (*op, res, ins, ins[0][0] if fresh else None) if ok else None
    if out:
        vals.v.pop(out, None)
        if res is not None:
            vals.v[out] = res
    return op


def _blocks(n: tuple, width: int) -> tuple:
    """An op's (root, column) blocks of `width`: written, read (row operands), fixed operands."""
    _, _, _, sc, outres, ins, _ = n
    k = outres[2] // width
    out = [(outres[0], outres[1] + b * width) for b in range(k)]
    reads = [(x[0], x[1] + b * width) for j, x in enumerate(ins) if j in sc[0] for b in range(k)]
    # (an operand read at row 0 -- a broadcast row -- counts as fixed: not written in the run)
    fixed = [x if j not in sc[0] else x[0] for j, x in enumerate(ins) if sc[0].get(j) != "i0"]
    return out, reads, fixed


def _fits(cur: list, notes: list, n: tuple) -> bool:
    """Whether op `n` may join the run `cur`: one block width divides every op's, and no op
    touches a block the run writes at another column offset (or reads it as a fixed operand)."""
    ops = [notes[j] for j in cur if notes[j][0] != "index"] + [n]
    width = min(o[4][2] for o in ops)
    if any(o[4][2] % width for o in ops):
        return False
    written: dict = {}
    whole: set = set()  # (roots read whole -- broadcast rows, fixed operands -- so far)
    for o in ops:
        out, reads, fixed = _blocks(o, width)
        for root, c in reads + out:
            if any(c != c2 and abs(c - c2) < width for c2 in written.get(root, ())):
                return False
        fixed = {re.split(r"\W", f)[0] for f in fixed}
        if fixed & set(written) or {root for root, _ in out} & (whole | fixed):
            return False  # (row by row, a later row would read what an earlier row wrote)
        whole |= fixed
        for root, c in out:
            written.setdefault(root, set()).add(c)
    return True


def _emit(r, run, body, notes, defaults, kinds, vals, after, params) -> tuple:
    """The step lines (rows check; the pass call and the run's name bindings; else the original
    lines) and the pass function's text for run `r`, and its call-time checks. The pass goes
    over the rows once; in each row, each op's column block is one loop of the op's scalar
    lines over that block (a loop over a few rows LLVM vectorises, as the kernels' own: one loop
    over all blocks' arrays at once needs more alias checks than it makes, and stays scalar),
    its values handed to the next ops through the row in L1."""
    ops = [notes[j] for j in run if notes[j][0] != "index"]
    width = min(o[4][2] for o in ops)
    args: dict[str, str] = {}  # expression -> pass parameter
    rowsof: dict[str, str] = {}  # pass parameter -> its row index ("i0" or "0")
    loops: list[list[str]] = []
    stored: set[tuple] = set()

    def param(expr: str, row: str = "i0") -> str:
        if expr not in args:
            args[expr] = f"p{len(args)}"
            rowsof[args[expr]] = row
        return args[expr]

    loads: list[tuple] = []  # (root, column) of the params the pass reads, before they are written
    for o in ops:
        _, _, _, (rows, lines, result), outres, ins, _ = o
        for b in range(outres[2] // width):
            sub, fixed = {}, {}
            for j, x in enumerate(ins):
                if j not in rows:
                    fixed[j] = param(x, "")
                    continue
                key = (x[0], x[1] + b * width)
                if key not in stored:
                    loads.append(key)
                if rows[j] == "vec":  # (a 1-D operand: indexed as itself)
                    sub[j] = param(f"{x[0]}[{key[1]}:{key[1] + width}]", "") + "[i1]"
                    continue
                sub[j] = param(f"{x[0]}[:, {key[1]}:{key[1] + width}]", rows[j]) + "r[i1]"
            key = (outres[0], outres[1] + b * width)
            store = param(f"{outres[0]}[:, {key[1]}:{key[1] + width}]")
            stored.add(key)
            code = []
            for line in lines:
                t = re.sub(r"\br(\d+)\[i1\]", lambda m, sub=sub: sub[int(m[1])], line)
                t = re.sub(r"\bx(\d+)\[i1\]", lambda m, sub=sub: sub[int(m[1])], t)
                code.append(re.sub(r"\bx(\d+)\[", lambda m, f=fixed: f"{f[int(m[1])]}[", t))
            loops.append(
                ["        for i1 in range(_w):"]
                + [f"            {c}" for c in code]
                + [f"            {store}r[i1] = {result}"]
            )
    names = list(args.values())
    first = next(p for p in names if rowsof[p] == "i0")
    fn = [
        "",
        "",
        "@njit(cache=True, nogil=True, error_model='numpy')",
        f"def _pass{r}(_w, {', '.join(names)}):",
        f"    for i0 in range({first}.shape[0]):",
        *[f"        {p}r = c_row({p}, {i})" for p, i in rowsof.items() if i],
        *[line for loop in loops for line in loop],
    ]
    # (its twin over rows of any stride, for operands whose rows are not contiguous: the same
    # scalar lines in the same order, no kernel calls in the step loop's module to type again)
    twin = [f"        {p}r = {p}[{i}]" for p, i in rowsof.items() if i]
    fn += [*fn[:3], fn[3].replace("(_w,", "s(_w,"), fn[4], *twin, *fn[5 + len(twin) :]]
    exprs = list(args)
    roots = sorted(
        {re.split(r"\W", e)[0] for e in exprs if e.count("[:, ")} - set(defaults) - set(vals.vec)
    )
    cond = " and ".join(f"{x}.strides[1] == {x}.itemsize" for x in roots) or "True"
    made = [  # (a two-operand ufunc's new array, as np.multiply(a, b) makes it)
        f"{o[0]} = np.empty(({o[6]}.shape[0], {o[4][2]}), {o[6]}.dtype)" for o in ops if o[6]
    ]
    # (the twin only where numba's types of the roots the caller does not check leave
    # non-contiguous rows possible: the backward loops' saved rows, column blocks of the slab,
    # are layout "A" to numba and contiguous rows in every call the caller lets through)
    maybe = [x for x in roots if x not in params]
    call = (
        f"({''.join(x + ', ' for x in maybe)}), _pass{r}, _pass{r}s, ({width}, {', '.join(exprs)})"
    )
    lines = [*made, f"_either({cond}, {call})"]
    for j in run:
        n = notes[j]
        lines.append(body[j] if n[0] == "index" else f"{n[0]} = {n[1]}" if n[0] else "pass")
    # (each block the pass loads from a carry, xs or invariant against each ys block it
    # stores: the same memory is sound -- each element is touched in its own row, in the
    # step's order --, overlapping otherwise is not)
    read = sorted({(root, c) for root, c in loads if kinds.get(root) in ("carry", "xs", "inv")})
    checks = [(root, [(c, width, read)]) for root, c in stored if kinds.get(root) == "ys" and read]
    return lines, fn, checks, set(roots) & params


def _kernel_call(line: str, defaults: dict) -> bool:
    """Whether `line` calls a generated kernel (not a ufunc): alone, it is a one-op pass, so
    the step loop's module types and links no kernel of its own (GRU's lone gate kernels)."""
    from numba.core.registry import CPUDispatcher

    m = _CALL.match(line)
    return m is not None and isinstance(defaults.get(m[2]), CPUDispatcher)


def _is2d(a: Any) -> bool:
    return hasattr(a, "ndim") and a.ndim == 2


def _params(disp: Any) -> list[str]:
    import inspect

    return list(inspect.signature(disp.py_func).parameters)
