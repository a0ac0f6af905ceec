"""A split loop's half as ONE nogil numba call (issue 19, BENCHMARKS.md "hloop"): the half's step
program -- a Python function calling numba kernels (the fused gate groups), the packed step GEMM
and a few NumPy ufuncs per step -- translated statement by statement into an @njit loop over the
steps that calls the same kernels, so the half runs with no Python (and no GIL hand-off) per step
and the two halves truly overlap. Same kernels, same operands, same order: the same bits as the
Python loop (tests/test_step_loop.py). A program with a statement the translator does not know
keeps the Python loop (`translate` raises Unsupported, scan_split reports why)."""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from . import compile_child, numba_interleave, step_fuse, step_pass, step_selects
from .background import failure
from .numba_backend import Unsupported, _load, _module_name, cache_dir
from .size_lift import lift_function, sizes_written_in
from .step_selects import index_text as _index_text
from .step_selects import split_args as _split_args

# NumPy ufuncs a step program may call (bound as np_<name>), by numba's name: the exactly rounded
# ones alone (NumPy's SIMD exp and tanh may differ from numba's libm in the last place; a step
# program calling them keeps the Python loop)
_UFUNCS = {
    "np_add": "np.add",
    "np_sub": "np.subtract",
    "np_subtract": "np.subtract",
    "np_mul": "np.multiply",
    "np_multiply": "np.multiply",
    "np_divide": "np.divide",
    "np_negative": "np.negative",
    "np_equal": "np.equal",
}
_CALL = re.compile(r"^(?:(\w+) = )?(\w+)\((.*)\)$")  # (a bare call: an in-place ufunc)
_INDEX = re.compile(r"^(\w+) = (\w+)\[(\w+)\]$")
_RETURN = re.compile(r"^return \((.*)\)$")
_CONCAT = re.compile(r"^\(([\w, ]*?),?\), axis=(-?\d+), out=(\w+)$")


def translate(
    source: str,
    defaults: dict,
    n_carry: int,
    n_xs: int,
    n_inv: int,
    n_h: int,
    late=(),
    direct: bool = False,
    keep: frozenset = frozenset(),
    shapes: tuple | None = None,
):
    """(numba module source, names of the kernel's array parameters taken from `defaults`, call-time
    checks, the int64 sizes the text reads from its `_dims` parameter: no size in the text, rows the
    caller checks) for a step program `source` (codegen's text: `def program(<positional>, *,
    <bound>):` then a statement a line) and its bound values `defaults`; Unsupported if a statement
    is unknown. `late`: the xs positions the half reads late (scan_split.half_loop's `late`): the
    kernel's last parameters are `_alias` and a row buffer `P<k>` each; when `_alias` (those xs lie
    in the slab the loop writes) each step's rows are copied there before the step, as the Python
    half loop does. `direct`: the concatenated gate values written straight into the ys row
    (step_fuse.py; not the parts `keep`: (ys position, column)), with call-time checks. With
    `direct` and `shapes` (the program's per-step parameter shapes, ys shapes) and not "nopass" in
    keep, runs of elementwise statements run as one pass each (step_pass.py, its `keep`)."""
    from numba.core.registry import CPUDispatcher

    from . import packed
    from .packed import PackedSite

    text = source.split("\n\n\n")[0].split("\n")
    head = re.match(r"^def program\((.*?)(?:, \*, .*)?\):$", text[0])
    if head is None:
        raise Unsupported("program header")
    params = _split_args(head.group(1))
    n_ys = len(params) - n_carry - n_xs - n_inv - n_h
    if n_ys < 0:
        raise Unsupported("program parameters")
    carries = params[:n_carry]
    xs = params[n_carry : n_carry + n_xs]
    ys = params[len(params) - n_ys :]
    arrays, body, final = [], [], None
    drivers: set[str] = set()  # (the packed kernels' modules: one geometry)
    modules: dict[str, tuple] = {}  # (the kernels called: name -> (module, function))
    inv = params[n_carry + n_xs : n_carry + n_xs + n_inv]
    kinds = {**dict.fromkeys(carries, "carry"), **dict.fromkeys(inv, "inv")}
    kinds.update({x: "late" if k in late else "xs" for k, x in enumerate(xs)})
    kinds.update(dict.fromkeys(ys, "ys"))

    def dispatcher(name: str) -> None:
        disp, module = defaults[name], defaults[name].py_func.__module__
        if not module.startswith("tapernn_"):
            raise Unsupported(f"{name}: a kernel outside the kernel cache")
        modules.setdefault(name, (module, disp.py_func.__name__))

    def array(name: str) -> str:
        v = defaults.get(name)
        if not isinstance(v, np.ndarray):
            raise Unsupported(f"{name}: not an array")
        if name not in arrays:
            arrays.append(name)
        return name

    stmts = []  # (kind, out, fn, args): "index", "call", "concat", "return"
    for line in text[1:]:
        s = line.strip()
        if not s or s.startswith("del "):
            continue
        m = _RETURN.match(s)
        if m:
            final = _split_args(m.group(1))
            stmts.append(("return", "", "", final))
            continue
        m = _INDEX.match(s)
        if m:
            out, x, idx = m.groups()
            if idx not in defaults:
                raise Unsupported(f"index {idx}")
            stmts.append(("index", out, idx, [x]))
            continue
        m = step_selects.COPY.match(s)
        if m:  # (a value copied into its saved row)
            stmts.append(("copy", m.group(1), "", [m.group(2)]))
            continue
        m = _CALL.match(s)
        if not m:
            raise Unsupported(f"statement {s[:60]!r}")
        out, fn, args = m.groups()
        out = out or f"_r{len(stmts)}"
        if fn == "np_concatenate":
            c = _CONCAT.match(args)
            if c is None:
                raise Unsupported("concatenate")
            stmts.append(
                ("concat", out, fn, [_split_args(c.group(1)), int(c.group(2)), c.group(3)])
            )
        else:
            stmts.append(("call", out, fn, _split_args(args)))
    direct = direct and "nodirect" not in keep
    fused = step_fuse.plan(stmts, defaults, kinds, keep) if direct else None
    for i, (kind, out, fn, args) in enumerate(stmts):
        if kind == "return":
            continue
        if fused and i in fused["binds"]:
            body.append(fused["binds"][i])
            continue
        if fused and i in fused["calls"]:
            dispatcher(fn)
            body.extend(fused["calls"][i])
            continue
        if kind == "copy":
            body.append(f"{out}[...] = {args[0]}")
            continue
        if kind == "index":
            body.append(f"{out} = {args[0]}[{_index_text(defaults[fn])}]")
            continue
        value = defaults.get(fn)
        if kind == "concat":
            parts, axis, dst = args
            lead = ":, " * axis if axis >= 0 else None
            if lead is None:
                raise Unsupported("concatenate axis")
            if fused and i in fused["concat"]:
                for p, o in fused["concat"][i]:
                    body.append(f"{dst}[{lead}{o}:{o} + {p}.shape[{axis}]] = {p}")
            else:
                body.append("_o = 0")
                for p in parts:
                    body.append(f"{dst}[{lead}_o:_o + {p}.shape[{axis}]] = {p}")
                    body.append(f"_o += {p}.shape[{axis}]")
            body.append(f"{out} = {dst}")
            continue
        args = ", ".join(args)
        if isinstance(value, PackedSite):
            a, w, panels, dst = _split_args(args)
            if dst == "None":
                target = f"np.empty(({a}.shape[0], {w}.shape[1]), {a}.dtype)"
            else:
                target = array(dst)  # (a C buffer: the driver writes it as one)
            body.append(f"{out} = _packed(np.ascontiguousarray({a}), {panels}, {target})")
            if value.kernel is None:  # (the driver of the site's kernel: its geometry)
                raise Unsupported(f"{fn}: its packed kernel is not in place")
            drivers.add(packed.module_of(value.kernel).__name__)
        elif isinstance(value, CPUDispatcher):
            dispatcher(fn)
            body.append(f"{out} = {fn}({step_selects.allocations(args, defaults)})")
        elif fn in _UFUNCS and value is getattr(np, _UFUNCS[fn][3:]):
            ins = _split_args(args)
            tail = [a for a in ins if a.startswith("out=")]
            ins = [a for a in ins if not a.startswith("out=")]
            if any("=" in a for a in ins):
                raise Unsupported(f"{fn} keywords")
            body.append(f"{out} = {_UFUNCS[fn]}({', '.join(ins + [t[4:] for t in tail[:1]])})")
        else:  # (MaskZero's row selects; else Unsupported)
            body += step_selects.call(out, fn, _split_args(args), defaults, stmts[i + 1 :])
    if final is None or len(final) != n_carry:
        raise Unsupported("the step's returned carries")
    funcs, pass_checks, sure = [], [], set()
    if direct and "nopass" not in keep and shapes is not None:  # (step_pass: one pass per run)
        named = {**dict(zip(params, shapes[0])), **dict(zip(ys, shapes[1]))}
        tail = f"{', '.join(final)}"
        body, funcs, pass_checks, sure = step_pass.fuse(body, defaults, named, kinds, tail, keep)
    body = step_selects.puts(body)  # (copies into slices: numba_put.put)
    for name in list(defaults):  # every other bound array the statements name is a parameter
        if isinstance(defaults[name], np.ndarray) and any(
            re.search(rf"\b{name}\b", b) for b in body
        ):
            array(name)
    for name in arrays:  # (the packed driver writes its `out` as one C block)
        if not defaults[name].flags.c_contiguous:
            raise Unsupported(f"{name}: not C-contiguous")
    hoisted = params[n_carry + n_xs + n_inv : len(params) - n_ys]
    big_x, big_y = [f"X{k}" for k in range(n_xs)], [f"Y{j}" for j in range(n_ys)]
    sig = [*carries, *big_x, *inv, *big_y, *hoisted, *arrays, "_dims", "_alias"]
    sig += [f"P{k}" for k in late]
    if len(drivers) > 1:
        raise Unsupported("packed kernels of two instruction sets")
    driver = drivers.pop() if drivers else packed._kernel_module().__name__
    imports = [  # (the kernels still called: step_pass's runs call none)
        f"{n} = _callee({m!r}, {f!r})"
        for n, (m, f) in modules.items()
        if any(re.search(rf"\b{n}\b", b) for b in body)
    ]
    lines = [
        numba_interleave.mark(),
        "import sys",
        "import numpy as np",
        "from numba import njit",
        "from tapernn.backends.step_callees import callee as _callee",
        *imports,
        f"_drv = sys.modules[{driver!r}]._panels",
        *([step_selects.PUT] if late or any("_put(" in b for b in body) else []),
        "",
        "",
        "@njit(inline='always')",  # (compiled on its own: 0.4-0.5 s more a loop, cold)
        "def _packed(a, panels, out):",
        "    _drv(a, panels, out, 0, panels.shape[0])",
        "    return out",
        *([step_selects.ROW_MAX] if any("_rowmax(" in b for b in body) else []),
        *([step_pass._header()] if funcs else []),
        *funcs,
        "",
        "",
    ]
    head = [
        "@njit(cache=True, nogil=True, error_model='numpy')",
        f"def kernel(length, reverse, lo, hi, {', '.join(sig)}):",
    ]
    loop = [
        "    for _s in range(length):",
        "        _t = length - 1 - _s if reverse else _s",
        # (the whole batch's xs and ys: a C array's [t, lo:hi] is a C array to numba, so every
        # kernel and the packed driver take the rows without a copy)
        *[f"        {x} = X{k}[_t, lo:hi]" for k, x in enumerate(xs)],
        *[
            f"        if _alias:\n            _put(P{k}, {xs[k]})\n            {xs[k]} = P{k}"
            for k in late
        ],
        *[f"        {y} = Y{j}[_t, lo:hi]" for j, y in enumerate(ys)],
        *[f"        {b}" for b in body],
        f"        {', '.join(carries)}, = {', '.join(final)},",
        f"    return ({''.join(c + ', ' for c in carries)})",
    ]
    kernel, dims = lift_function(head, loop)  # (its sizes read from `_dims`: step_pass's too)
    where = {
        **{c: ("carry", k) for k, c in enumerate(carries)},
        **{x: ("xs", k) for k, x in enumerate(xs)},
        **{v: ("inv", k) for k, v in enumerate(inv)},
    }
    checks = [  # (ys position, [(column, columns, [(kind, position)])]): step_fuse.overlaps
        (ys.index(dst), [(o, n, [where[r] for r in names]) for o, n, names in window])
        for dst, window in (fused or {}).get("checks", [])
    ]
    checks += [  # (the passes': a negative ys position -1 - j, each load's column block)
        (-1 - ys.index(dst), [(o, n, [(*where[r], c) for r, c in names]) for o, n, names in window])
        for dst, window in pass_checks
    ]
    rows = sorted(where.get(r) or ("ys", ys.index(r)) for r in sure)  # (step_fuse.strided)
    return "\n".join(lines + kernel) + "\n", arrays, checks, np.array(dims, np.int64), rows


CALLS = [0]  # half loops run as one numba call so far (tests)
_kernels: dict[str, Any] = {}  # by source: the loaded module's kernel (its types compiled)
_lock = threading.Lock()


class StepLoop:
    """A half's loop as one numba call: `__call__` takes `args` (see `args`) and returns the
    final carries. `prepare(key)` loads and compiles the kernel for those arguments' types
    (numba's cache=True across processes); `error` says why it could not."""

    def __init__(self, source: str, arrays: list, length: int, reverse: Any, late: tuple = ()):
        self.source, self.arrays, self.late = source, arrays, late  # (late: the P<k> buffers)
        self.length, self.reverse = int(length), bool(reverse)
        self.kernel: Any = None
        self.error = ""
        self.checks, self.rows = [], []  # (translate's, for step_fuse.overlaps and .strided)
        self.passes = len(re.findall(r"\ndef _pass\d+\(", source))  # (step_pass's runs)

    @property
    def concrete(self) -> str:
        """The kernel's text with its sizes (`_dims`: the last of `arrays`) written in."""
        return sizes_written_in(self.source, self.arrays[-1])

    def args(self, args: tuple) -> tuple:
        """The kernel's arguments for `args` = (lo, hi, the half's carries, the whole batch's
        xs, the invariants, the whole batch's ys, the hoisted values as one tuple, alias)."""
        *rest, hoisted, alias = args
        return (self.length, self.reverse, *rest, *hoisted, *self.arrays, alias, *self.late)

    def key(self, args: tuple) -> tuple:
        """numba's argument types of a call with `args` (see `args`)."""
        from numba import typeof

        return tuple(typeof(a) for a in self.args(args))

    def has(self, key: tuple | None = None) -> bool:
        return self.kernel is not None

    def prepare(self, key: tuple) -> bool:
        """Load the module and compile the kernel for argument types `key` (background.py's
        handle protocol; numba's cache=True across processes: a child's, waited for first)."""
        compile_child.settle_for(self.source)
        with _lock:
            if self.kernel is None and not self.error:
                try:
                    kernel = _kernels.get(self.source)
                    if kernel is None:
                        kernel = _kernels[self.source] = _load(self.source)
                    with numba_interleave.named(self.source, key):
                        kernel.compile(key)
                    self.kernel = kernel
                except Exception as e:  # noqa: BLE001 -- any failure: the Python loop runs
                    self.error = failure(e)
        return self.kernel is not None

    def __call__(self, *args):
        CALLS[0] += 1
        step_fuse.CALLS[0] += bool(self.checks)
        step_pass.CALLS[0] += self.passes
        return self.kernel(*self.args(args))


class _Bound:
    """A half's StepLoop with its arguments, called with none (scan_split's `_halves`)."""

    __slots__ = ("args", "loop")

    def __init__(self, loop: StepLoop, args: tuple):
        self.loop, self.args = loop, args

    def __call__(self):
        return self.loop(*self.args)


class Halves:
    """Both halves' StepLoops of a split loop, and when they take over: the first split call
    asks for the compile (in the background, unless that is off: then now) and runs the Python
    loops; from the second on, the numba loops once the compile is done (never waited for:
    both run the same kernels in the same order, so the switch point does not change a bit),
    or the Python ones for good if it failed (`error`)."""

    def __init__(self, loops: list[StepLoop]):
        self.loops = loops
        self.remake: Any = None  # (keep -> Halves: step_fuse's parts left copied)
        self.calls = 0
        self.ready: threading.Event | None = None
        self.error = ""

    def choose(self, runner: Any, whole: tuple, hoisted: tuple, alias: bool = False):
        """This split call's two half loops as numba calls taking no arguments (`whole`: the
        call's carries, xs, invariants and ys, whole batch; `hoisted`: each half's hoisted
        values; `alias`: late-read xs lie in the slab), or None: the Python loops run (until
        the compile is ready; for good once it failed: the report says why)."""
        (cs, xs, inv, ys), at = whole, {}  # (at: the arrays' addresses, both halves' checks)
        if self.calls == 0 and self.remake is not None:  # (the parts whose row columns an
            # array read after the moved write lies in, in this call: copied as before)
            keep = set()
            for f, (lo, hi) in zip(self.loops, runner.rows):
                keep |= step_fuse.overlaps(f.checks, whole, lo, hi, f.length, f.reverse, at)
            if any(j < 0 for j, _ in keep):  # (a pass's: every run as before)
                keep = {k for k in keep if k[0] >= 0} | {"nopass"}
            keep |= {"strided"} if step_fuse.strided(self.loops, whole) else set()  # (twins)
            if keep:
                made = self.remake(frozenset(keep))
                if isinstance(made, Halves):
                    self.loops = made.loops
        args = [
            (lo, hi, *[c[lo:hi] for c in cs], *xs, *inv, *ys, h, bool(alias))
            for (lo, hi), h in zip(runner.rows, hoisted)
        ]
        fns = self.pick(*args)
        if self.error and self.remake is not None:  # (the direct writes' or passes' kernel
            # did not compile: the plain translation, compiled from the next call)
            made, self.remake = self.remake(frozenset({"nopass", "nodirect"})), None
            if isinstance(made, Halves):
                note(runner, f"direct writes and passes off: numba: {self.error}")
                self.loops, self.error, self.calls, self.ready = made.loops, "", 0, None
                return None
        if self.error:
            note(runner, f"halves' loops in Python: numba: {self.error}")
            runner.step_loops = None
        elif fns is not None:
            if step_fuse.strided(fns, whole):  # (rows the passes read as C rows)
                note(runner, "calls whose rows are strided run in Python")
                return None
            for f, (lo, hi) in zip(fns, runner.rows):
                if step_fuse.overlaps(f.checks, whole, lo, hi, f.length, f.reverse, at):
                    # (memory the moved writes could reach first: the Python loops)
                    step_fuse.REFUSED[0] += 1
                    note(runner, "direct row writes refused in a call: xs may overlap")
                    return None
            note(runner, "each half's loop one numba call")
            if any(j >= 0 for j, _ in fns[0].checks):
                note(runner, "gates written straight into the saved rows")
            if fns[0].passes:
                note(runner, f"{fns[0].passes} elementwise runs one pass each")
            return _Bound(fns[0], args[0]), _Bound(fns[1], args[1])
        return None

    def pick(self, args0: tuple, args1: tuple) -> tuple | None:
        from . import background

        a, b = self.loops
        self.calls += 1
        if self.calls == 1:
            key = a.key(args0)
            if background.enabled():  # (a child compiles it meanwhile, where it may)
                compile_child.ask(_module_name(a.source), a.source, "kernel", [key], cache_dir())
                self.ready = background.request(a, key)
                return None
            a.prepare(key)
        elif self.ready is not None:
            if not self.ready.is_set():
                return None  # still compiling: the Python halves run (the same bits)
            self.ready = None
        # (b's argument types read once: typeof of its ~25 arguments cost ~0.1 ms a call)
        if not a.has() or not (b.has() or b.prepare(b.key(args1))):
            self.error = a.error or b.error or "no kernel"
            return None
        return a, b


def attach(runner: Any, compiled: list, enabled: Any, lates: list | None = None) -> Halves | None:
    """A SplitRunner's halves (their compiled step programs `compiled`; `lates`: each half's
    {xs position: row buffer} of late-read xs, scan_split.half_loop's `late`) as step loops, or
    None (not `enabled`, or a program that does not translate: the report says why)."""
    on, direct = enabled if isinstance(enabled, tuple) else (enabled, True)
    if not on:
        return None
    made = for_halves(compiled, runner.attrs, lates, bool(direct) and step_fuse.DIRECT[0])
    if isinstance(made, str):
        note(runner, f"halves' loops in Python: {made}")
        return None
    return made


def note(runner: Any, text: str) -> None:
    """`text` once in the loop's compile report line (LoopReport.kernel)."""
    if runner.report is not None and text not in runner.report.kernel:
        runner.report.kernel += f" ({text})"


def for_halves(
    compiled: list,
    attrs: dict,
    lates: list | None = None,
    direct: bool = False,
    keep: frozenset = frozenset(),
) -> Halves | str:
    """Both halves' loops (their compiled step programs `compiled`, late-read xs `lates`) as
    one numba call each, or why not; `direct`: step_fuse's writes into the ys rows."""
    nc, nx = attrs["n_carry"], attrs["n_xs"]
    n_inv = len(attrs["body"].inputs) - nc - nx
    out = []
    for c, late in zip(compiled, lates or [{}] * len(compiled)):
        late = late or {}
        prologue = getattr(c, "prologue", None)
        n_h = len(prologue.graph.outputs) if prologue is not None else 0
        defaults = c.program.fn.__kwdefaults__ or {}
        shapes = (
            [tuple(i.shape) for i in c.graph.inputs],
            [tuple(o.shape) for o in c.graph.outputs[nc:]],
        )
        try:
            source, names, checks, dims, rows = translate(
                c.program.source, defaults, nc, nx, n_inv, n_h, tuple(late), direct, keep, shapes
            )
        except Unsupported as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 -- a program the translator misreads: Python
            return f"{type(e).__name__}: {e}"
        arrays = [*(defaults[n] for n in names), dims]  # (`_dims`: translate's sig)
        loop = StepLoop(source, arrays, attrs["length"], attrs["reverse"], tuple(late.values()))
        loop.checks, loop.rows = checks, rows
        out.append(loop)
    halves = Halves(out)
    if direct and any(loop.checks or loop.rows for loop in out):
        halves.remake = lambda keep: for_halves(compiled, attrs, lates, direct, keep)
    return halves
