"""Lowering the `scan` op: its body compiled once (the caller's pass pipeline and PlanOptions,
its own memory plan), cached per body Graph object, and run by a generated loop that carries the
states from step to step and writes each step's ys into its row of the slab."""

from __future__ import annotations

import builtins
import functools
import itertools
import re
import traceback
import weakref
from typing import Any

import numpy as np

from .backends import resolve_backend
from .codegen import lowering_context
from .errors import TapernnError, ValueRangeError, where
from .executor import Compiled, compile
from .graph import Graph
from .ops.registry import PSEUDO, get_op
from .passes.driver import LoopReport
from .scan_hoist import compile_hoisted
from .scan_ir import body_dtype, slab_sizes, ys_places
from .scan_views import carry_views as _carry_views
from .scan_views import split_row_slices
from .scan_views import view_specs as _view_specs
from .scan_views import ys_views as _ys_views
from .scan_xs import late_xs, reads_xs_first, writable_over_xs

# body Graph -> {(passes, options): Compiled}: a template reused (another length, another
# scan node over the same body) is not compiled again
_BODIES: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()
COMPILES = [0]  # bodies compiled so far (tests count recompilations)


def compiled_body(
    body: Graph,
    passes: Any,
    options: Any,
    n_variant: int | None = None,
    written: tuple[int, ...] = (),
) -> Compiled:
    """`body` compiled (cached); given `n_variant` (its carries + xs), work on its invariants
    alone runs once per loop call in the result's `.prologue` (scan_hoist); `written`: the
    outputs (the ys) its program computes into arrays the caller passes (the slab rows)."""
    key = (None if passes is None else tuple(passes), options, tuple(written))
    cache = _BODIES.setdefault(body, {})
    found = cache.get(key)
    if found is None:
        COMPILES[0] += 1
        # (a copy: the Compiled may hold the graph it was given, and a cached value holding its
        # weak key would keep it alive forever)
        found = cache[key] = (
            compile(body.copy(), passes=passes, options=options, written=written)
            if n_variant is None
            else compile_hoisted(body.copy(), n_variant, passes, options, written)
        )
    return found


def forget_body(body: Graph, passes: Any, options: Any, written: tuple[int, ...]) -> None:
    """Drop compiled_body's cached compile of `body` (its buffers are freed with it)."""
    key = (None if passes is None else tuple(passes), options, tuple(written))
    _BODIES.get(body, {}).pop(key, None)


def lower_scan(args: list[str], attrs: dict, out: str | None, bind: Any) -> str:
    """The scan op's line of generated source: a call of its runner (the op's `lower`)."""
    ctx = lowering_context()
    body, nc = attrs["body"], attrs["n_carry"]
    used = _without_fixed(body, nc)
    n_live = nc - len(fixed_carries(body, nc))
    written = tuple(range(n_live, len(used.outputs)))

    def compile_body(options: Any, drop: bool = False) -> Compiled:
        if drop:  # (the numba loop kernel's NumPy body, unused: its buffers freed)
            return forget_body(used, ctx.passes, options, written)
        return compiled_body(used, ctx.passes, options, nc + attrs["n_xs"], written)

    # the planner computed an input straight into the rows of `out` (PlanOptions.xs_in_slab)
    in_slab = out is not None and id(attrs) in ctx.xs_in_slab
    if resolve_backend(ctx.options.backend) == "numba":  # one @njit function for the whole loop
        from .backends import numba_loop

        compiled, runner, kernel = numba_loop.lower(
            attrs,
            compile_body,
            functools.partial(make_runner, xs_in_slab=True) if in_slab else make_runner,
            ctx.options,
            fixed_carries(body, nc),
            xs_in_slab=in_slab,
            over=writable_over_xs(attrs, body_dtype(body), True, memo=True) if in_slab else None,
        )
        if ctx.options.batch_split != "off" and kernel.startswith("Python loop"):
            runner, kernel = _batch_split(runner, compiled, used, attrs, ctx, kernel)
    else:
        # the carries the body computes (not views, inputs or ys too) go into two arrays the
        # runner holds and alternates, not into a new array each step
        own = _carries_computed(used, n_live)
        compiled = compiled_body(used, ctx.passes, ctx.options, nc + attrs["n_xs"], own + written)
        # `out` a buffer of the program (bound once, the same every call): its slab views too
        keep = out is not None and re.fullmatch(r"b\d+", out) is not None
        runner, kernel = make_runner(compiled, attrs, keep, in_slab, own), "Python loop"
    c, y = slab_sizes(body, nc)
    itemsize = body_dtype(body).itemsize
    report = LoopReport(
        scope=ctx.loop_scopes.get(id(attrs), ""),
        length=attrs["length"],
        reverse=attrs["reverse"],
        body=compiled.report,
        body_nodes=len(compiled.graph.nodes),
        carry_bytes=c * itemsize,
        step_bytes=y * itemsize,
        largest_gemm_flops=compiled.largest_gemm_flops,
        buffer_bytes=_buffer_bytes(compiled),
        body_key=id(compiled),
        kernel=kernel,
        # (a split loop's halves: their own prologues' buffers at most; their step buffers are
        # carved from the full body's, scan_split.BufferPool)
        workspace_bytes=_workspace_bytes(runner) + getattr(runner, "own_bytes", 0),
        call_bytes=_call_bytes(compiled) + getattr(runner, "carry_call_bytes", 0),
        node_key=id(attrs),
    )
    ctx.sub_reports.append(report)
    if hasattr(runner, "split_calls"):  # (its note changes if the split fails)
        runner.report = report
    elif hasattr(runner, "report"):  # a numba loop kernel's note changes if it fails
        runner.report = report
        ctx.bodies[id(attrs)] = (compiled, fixed_carries(body, nc), runner, report)
    prologue = getattr(compiled, "prologue", None)
    if (  # (its panels may go into a weight's zeroed .grad: pack_scratch.py; not a loop a
        # whole-program kernel may inline, which runs the prologue its own way; a split loop's
        # halves share the full body's prologue and its panels, zeroed when both have ended)
        prologue is not None
        and getattr(prologue.program, "pack_slots", None)
        and id(attrs) not in ctx.bodies
    ):
        ctx.loop_scratch.append((id(attrs), prologue.program))
    name = bind("scan_run", runner)
    return f"{name}({', '.join(args)}{f', out={out}' if out else ''})"


def _batch_split(runner: Any, compiled: Compiled, used: Graph, attrs: dict, ctx: Any, kernel: str):
    """The loop's rows split over two threads (scan_split.py) when its body allows it."""
    from . import scan_columns, scan_split

    nc, nx = attrs["n_carry"], attrs["n_xs"]
    fixed = fixed_carries(attrs["body"], nc)
    graphs, why = scan_split.plan(used, attrs, compiled, fixed, ctx.options.batch_split)
    if graphs is None:
        return runner, f"{kernel}; no batch split: {why}"
    body, dtype = attrs["body"], body_dtype(attrs["body"])
    n_live, shifted = nc - len(fixed), attrs.get("shifted", ())
    written, at = tuple(range(n_live, len(used.outputs))), (nc, nx, n_live, shifted)
    helpers = {
        "dtype": dtype,
        "size": ys_places(body, nc, attrs["length"], attrs["reverse"], shifted)[0],
        "ys_views": _ys_views(body, nc, attrs, dtype),
        "carry_views": _carry_views([o.shape for o in body.outputs[:nc]], dtype),
        "make_over": lambda first: writable_over_xs(attrs, dtype, first, memo=True),
        "reads": lambda c: (reads_xs_first(c, *at), late_xs(c, *at)),
        "make_fail": lambda c: _failure(c, attrs, "", 0),
        "prologue": _prologue_of(compiled),
        "prologue_source": getattr(getattr(compiled, "prologue", None), "source", None),
        "prologue_bytes": _buffer_bytes(compiled) - compiled.program.plan.buffer_bytes,
        "lent": scan_split.lent_of(compiled),
        "full_buffers": compiled.program.arrays,
        "step_loops": (ctx.options.step_loops, ctx.options.step_direct),
    }
    split = scan_split.SplitRunner(
        runner,
        compiled.program.fn,
        graphs,
        attrs,
        lambda graph: compiled_body(graph, ctx.passes, ctx.options, nc + nx, written),
        helpers,
        ctx.options.batch_split,
        scan_columns.rule(compiled.graph, ctx.options.batch_split),
    )
    return split, f"{kernel}; {split.note()}"


def _prologue_of(compiled: Compiled) -> tuple:
    """(a compiled body's prologue function or None, its outputs' shapes and dtypes)."""
    prologue = getattr(compiled, "prologue", None)
    if prologue is None:
        return None, []
    return prologue.program.fn, [(o.shape, o.dtype) for o in prologue.graph.outputs]


def _workspace_bytes(runner: Any) -> int:
    """A numba loop kernel's workspaces, or the Python runner's private copies of a step's xs
    rows (a body reading its xs late over a slab they lie in: make_runner's `_P<k>`); both
    made once by the runner."""
    runner = getattr(runner, "full", runner)  # (a SplitRunner: its halves' buffers added above)
    handle = getattr(runner, "handle", None)
    if handle is None:
        bound = getattr(runner, "bound", None) or {}
        arrays = [a for k, a in bound.items() if re.fullmatch(r"_P\d+", k)]
        arrays += [a for k, pair in bound.items() if re.fullmatch(r"_C\d+", k) for a in pair]
        return sum(a.nbytes for a in arrays)
    from .backends import numba_loop

    return numba_loop.work_bytes(handle.work)


def _call_bytes(compiled: Compiled) -> int:
    """Bytes the invariant prologue allocates per loop call (its results, e.g. the packed
    weight panels: held until the loop returns)."""
    prologue = getattr(compiled, "prologue", None)
    return prologue.program.plan.per_call_bytes if prologue is not None else 0


def _buffer_bytes(compiled: Compiled) -> int:
    """Bytes of the buffers a compiled body keeps (its invariant prologue's included)."""
    prologue = getattr(compiled, "prologue", None)
    extra = prologue.program.plan.buffer_bytes if prologue is not None else 0
    return compiled.program.plan.buffer_bytes + extra


def _carries_computed(body: Graph, n_live: int) -> tuple[int, ...]:
    """The live carries (positions among `body`'s first n_live outputs) a step computes into
    an array of its own: not an input, a view, 0-d, nor returned twice (a carry that is also
    a ys is computed into its slab row)."""
    outs = body.outputs
    return tuple(
        k
        for k in range(n_live)
        if outs[k].op not in PSEUDO
        and not get_op(outs[k].op).view
        and outs[k].shape != ()
        and outs.count(outs[k]) == 1
    )


_FIXED: weakref.WeakKeyDictionary[Graph, Graph] = weakref.WeakKeyDictionary()


def fixed_carries(body: Graph, n_carry: int) -> list[int]:
    """Carries the body returns unchanged (an accumulation push-out moved out of the loop)."""
    return [k for k in range(n_carry) if body.outputs[k] is body.inputs[k]]


def _without_fixed(body: Graph, n_carry: int) -> Graph:
    """The body without its fixed carries among the outputs (the loop keeps them in place
    instead of copying them every step); made once per body."""
    fixed = fixed_carries(body, n_carry)
    if not fixed:
        return body
    if body not in _FIXED:
        outs = [o for k, o in enumerate(body.outputs) if k not in fixed]
        _FIXED[body] = Graph(body.nodes, body.inputs, outs, body.meta)
    return _FIXED[body]


def make_runner(
    compiled: Compiled,
    attrs: dict,
    keep_out: bool = False,
    xs_in_slab: bool = False,
    own: tuple[int, ...] = (),
    hold_copies: bool = True,
):
    """A function (initial carries, xs, invariants, out=None) -> slab running the compiled
    body once per step: generated source, the carries in locals, the body program's
    statements inlined into the loop (no call per step; `_inlined`), its ys computed into
    their rows of the slab (`compiled` writes its ys outputs, codegen.Program(written=)), so
    a step costs the body's own lines plus its xs slices and ys rows, made by iterating the
    arrays in the loop header. `keep_out`: the caller passes the same `out` every call (a buffer
    of its program), so the slab views of it are made once and kept. `xs_in_slab`: xs may lie
    in the rows of `out` (the planner's PlanOptions.xs_in_slab): written over directly when each
    xs row t is inside slab row t and the body reads its xs before writing any ys
    (`reads_xs_first`), else the loop writes a slab of its own, copied into `out`. `own`:
    live carries (positions) `compiled` writes into arrays it is given (its first written
    outputs, before the ys): two per carry, made once, each step writing the one that does not
    hold the carry it reads. `hold_copies=False` (a numba loop kernel's NumPy fallback): the
    late xs copies are made per call, not held beside the kernel's workspace."""
    body, nc, nx = attrs["body"], attrs["n_carry"], attrs["n_xs"]
    given = ", _slab is out" if keep_out else ""  # views of `out` made once, kept
    length, reverse, shifted = attrs["length"], attrs["reverse"], attrs.get("shifted", ())
    n_in = len(body.inputs)
    size = ys_places(body, nc, length, reverse, shifted)[0]
    carry_shapes = [o.shape for o in body.outputs[:nc]]
    y_shapes = [o.shape for o in body.outputs[nc:]]
    params = [f"a{k}" for k in range(n_in)]
    cs, xs, inv = params[:nc], params[nc : nc + nx], params[nc + nx :]
    prologue = getattr(compiled, "prologue", None)
    n_hoisted = len(prologue.graph.outputs) if prologue else 0
    hoisted = [f"a{n_in + k}" for k in range(n_hoisted)]
    ys = [f"_Y{j}" for j in range(len(y_shapes))]
    live = [cv for k, cv in enumerate(cs) if k not in fixed_carries(body, nc)]
    outs = [f"w{i}" for i in range(len(own))]  # (the body's first written arrays)
    kept = [cv for k, cv in enumerate(live) if k not in own]  # (returned by the body)
    inline = _inlined(compiled, n_in + n_hoisted, len(own) + len(ys), kept)
    xs_params = [f"_X{k}" for k in range(nx)] if inline else xs
    order = f"range({length - 1}, -1, -1)" if reverse else f"range({length})"
    # xs in the slab (xs_in_slab): a body that reads them late reads copies of the step's rows
    order_of = (
        reads_xs_first(compiled, nc, nx, len(live), shifted) if xs_in_slab and xs else "first"
    )
    late = late_xs(compiled, nc, nx, len(live), shifted) if order_of == "late" else []
    private = [f"_P{k}" for k in late]
    # small late xs: copied whole before the loop (one copy per xs and call, not one per xs
    # and step; held by the runner like the per-step rows: CompileReport.workspace_bytes)
    rows_of = [body.inputs[nc + k] for k in late]
    block = bool(inline and late) and length * sum(v.nbytes for v in rows_of) <= LATE_BLOCK_BYTES
    blocks = {k: (((length,) if block else ()) + v.shape, v.dtype) for k, v in zip(late, rows_of)}
    # (the bound names are globals of the runner's own namespace, not keyword defaults:
    # CPython copies every keyword default into each call's frame, ~1 us for 30 names)
    head = f"def run({', '.join(cs + xs_params + inv)}, out=None):"
    lines = [head]
    # panels made in a weight's zeroed .grad (pack_scratch.py): zeros again when the loop ends
    lent = (getattr(prologue.program, "pack_slots", None) or {}) if prologue else {}
    if hoisted and lent:  # (the invariant work, once per call)
        lines += ["    try:", f"        {', '.join(hoisted)}, = _pre({', '.join(inv)})"]
        lines += ["    except BaseException:", "        _lent.zero(False)", "        raise"]
    elif hoisted:
        lines.append(f"    {', '.join(hoisted)}, = _pre({', '.join(inv)})")
    over = f" and _over(out, {', '.join(xs_params)})" if xs_in_slab and xs else ""
    lines.append(
        f"    _slab = out if out is not None and out.flags.c_contiguous and out.dtype == _dtype"
        f"{over} else _np_empty({size}, _dtype)"
    )
    if private:
        shares = " or ".join(f"_np_shares(out, {xs_params[k]})" for k in late)
        lines.append(f"    _alias = _slab is out and ({shares})")
    if private and not hold_copies:  # (per call: the copies a held runner keeps)
        lines += [f"    {p} = _np_empty(*_Ps{k})" for p, k in zip(private, late)]
    if block:
        lines.append("    if _alias:")
        for p, k in zip(private, late):
            lines += [f"        {p}[...] = {xs_params[k]}", f"        {xs_params[k]} = {p}"]
    inits = [f"_I{j}" for j, _ in shifted]  # the initial carries' rows of shifted ys blocks
    if ys:
        lines.append(f"    {', '.join(ys + inits)}, = _ys_views(_slab{given})")
    lines += [f"    {i}[...] = {cs[k]}" for i, (_, k) in zip(inits, shifted)]
    # small pairs held by the runner (its workspace); larger ones made per call, freed when it
    # returns (LoopReport.call_bytes): held, they would add to every moment's peak
    own_outs = [compiled.graph.outputs[k] for k in own]
    held = 2 * sum(o.nbytes for o in own_outs) <= CARRY_HELD_BYTES
    lines += [
        f"    {w}, _Q{i} = _C{i}"
        if held
        else f"    {w}, _Q{i} = _np_empty(_Cs{i}, _Cd{i}), _np_empty(_Cs{i}, _Cd{i})"
        for i, w in enumerate(outs)
    ]
    # after a step: its carry is the array it wrote, the next step writes the other one
    swaps = [
        line
        for i, (w, k) in enumerate(zip(outs, own))
        for line in (f"            {live[k]} = {w}", f"            {w}, _Q{i} = _Q{i}, {w}")
    ]
    # ys row slices the body takes each step: split from one view per call (scan_views)
    ys_rows = {f"w{len(own) + j}": y for j, y in enumerate(ys)}
    body_lines, splits = split_row_slices(inline[0], inline[1], ys_rows) if inline else ([], [])
    lines += [f"    _S{n} = {y}[_ix{n}]" for n, (_, y, _) in enumerate(splits)]
    lines += ["    _t = _ok = None" if lent else "    _t = None", "    try:"]
    # (xs the inlined body never reads -- values its VJP template took that passes moved out
    # of the loop -- are not split into rows: a view per step each)
    text = "\n".join(body_lines)
    read = [k for k, x in enumerate(xs) if not inline or re.search(rf"\b{x}\b", text)]
    if inline and (read or ys_rows):
        # each step's xs slices and ys rows come from NumPy's own iteration over the arrays
        # (in step order: reversed() for a reverse loop), not from a Python index each
        taken = [w for w in ys_rows if re.search(rf"\b{w}\b", text)]  # (rows still read)
        steps = [xs_params[k] for k in read] + [ys_rows[w] for w in taken]
        steps += [f"_S{n}" for n in range(len(splits))]
        rows = [f"reversed({p})" if reverse else p for p in steps]
        names = [xs[k] for k in read] + taken + [o for o, _, _ in splits]
        lines.append(f"        for _t, {', '.join(names)}, in zip({order}, {', '.join(rows)}):")
    else:
        lines.append(f"        for _t in {order}:")
    if inline:
        if private and not block:  # (only when they do lie in the slab)
            lines.append("            if _alias:")
            for p, k in zip(private, late):  # (`p[...] = x`: np.copyto's dispatch: +0.4 us)
                lines += [f"                {p}[...] = {xs[k]}", f"                {xs[k]} = {p}"]
        first = len(lines) + 1  # the runner's line of the body's first statement
        lines += ["        " + line for line in body_lines] + swaps
    else:
        first = 0
        lines += [f"            {p}[...] = {xs[k]}[_t]" for p, k in zip(private, late)]
        # (always copies: a Python-level loop)
        step_xs = [f"_P{k}" if k in late else f"{x}[_t]" for k, x in enumerate(xs)]
        step = cs + step_xs + inv + hoisted + outs + [f"{yv}[_t]" for yv in ys]
        call = f"_fn({', '.join(step)})"
        lines.append(f"            {', '.join(kept)}, = {call}" if kept else f"            {call}")
        lines += swaps
    lines += ["        _ok = True"] if lent else []
    lines += ["    except Exception as e:", "        raise _fail(e, _t) from None"]
    if lent:  # (but on a normal end not those the backward overwrites next: Lent.left)
        lines += ["    finally:", "        _lent.zero(_ok)"]
    if cs and keep_out:
        lines.append(f"    {', '.join(f'_v{k}' for k in range(nc))}, = _carry_views(_slab{given})")
        lines += [f"    _v{k}[...] = {cv}" for k, cv in enumerate(cs)]
    elif cs:  # (each final carry's view made in its line: no call, no list)
        lines += [
            f"    _nd(_cs{k}, _dtype, _slab, _co{k}, _ct{k})[...] = {cv}" for k, cv in enumerate(cs)
        ]
    lines += [
        "    if out is not None and _slab is not out:",
        "        _np_copyto(out, _slab)",
        "        return out",
        "    return _slab",
    ]
    source = "\n".join(lines) + "\n"
    filename = f"<tapernn scan runner {next(_runner_ids)}>"
    namespace: dict[str, Any] = {
        **(inline[1] if inline else {"_fn": compiled.program.fn}),
        "_fail": _failure(compiled, attrs, filename, first),
        "_np_empty": np.empty,
        "_np_copyto": np.copyto,
        "_np_shares": np.may_share_memory,
        "_ys_views": _ys_views(body, nc, attrs, body_dtype(body)),
        "_carry_views": _carry_views(carry_shapes, body_dtype(body)),
        "_nd": np.ndarray,
        **{f"_ix{n}": index for n, (_, _, index) in enumerate(splits)},
        **{
            f"_c{part}{k}": value
            for k, spec in enumerate(_view_specs(0, carry_shapes, None, 0, body_dtype(body)))
            for part, value in zip("sot", spec)
        },
        "_pre": prologue.program.fn if prologue else None,
        "_lent": getattr(prologue.program, "dest", None) if prologue else None,
        "_dtype": body_dtype(body),
        "_over": writable_over_xs(attrs, body_dtype(body), order_of != "aliased", memo=True),
        **{p: np.empty(*blocks[k]) for p, k in zip(private, late) if hold_copies},
        **{f"_Ps{k}": blocks[k] for k in late},
        **{
            f"_C{i}": tuple(np.empty(o.shape, o.dtype) for _ in range(2))
            for i, o in enumerate(own_outs)
            if held
        },
        **{f"_Cs{i}": o.shape for i, o in enumerate(own_outs) if not held},
        **{f"_Cd{i}": o.dtype for i, o in enumerate(own_outs) if not held},
    }
    exec(builtins.compile(source, filename, "exec"), namespace)  # noqa: S102
    run = namespace["run"]
    run.source = source
    run.bound = namespace  # (its bound names: tests and _workspace_bytes read them)
    run.carry_call_bytes = 0 if held else 2 * sum(o.nbytes for o in own_outs)
    return run


_runner_ids = itertools.count()
# late xs of at most this many bytes in all are copied whole once a loop call into blocks the
# runner holds (counted: _workspace_bytes), larger ones row by row a step (make_runner): the
# per-step copies cost ~0.3 us each (25 a (1, 5, 5) LSTM backward)
LATE_BLOCK_BYTES = 8 << 10
# carry pairs (two alternating arrays per computed carry) of at most this many bytes in all
# are held by the runner, larger ones made once a call (hsplitlend: held at (32, 256) they
# added 0.08U to the steady loop's peak)
CARRY_HELD_BYTES = 16 << 10


def _inlined(compiled: Compiled, n_params: int, n_ys: int, live: list[str]):
    """(the body program's statements with its return turned into the carries' assignment,
    the names it binds) to inline into the loop, or None when it cannot be: the program's
    bound names must stay its own (numba kernels compiled in the background rebind them)."""
    program = compiled.program
    code = program.fn.__code__
    expected = tuple([f"a{k}" for k in range(n_params)] + [f"w{j}" for j in range(n_ys)])
    if program.sites or code.co_varnames[: code.co_argcount] != expected:
        return None
    text = program.source.split("\n\n", 1)[0].splitlines()
    statements, ret = text[1:-1], text[-1]
    if not ret.startswith("    return ("):
        return None
    if live:
        statements.append(f"    {', '.join(live)}, = {ret[len('    return ') :]}")
    return statements, dict(program.fn.__kwdefaults__)


def _failure(compiled: Compiled, attrs: dict, filename: str, first: int):
    """The error a failing step raises: the body node and the step it failed at (its line in
    the body program, or in the runner from line `first` when the body is inlined)."""

    def fail(e: BaseException, t: int | None) -> TapernnError:
        node = compiled.program.failing_node(e)
        if node is None and first:
            for frame, lineno in traceback.walk_tb(e.__traceback__):
                if frame.f_code.co_filename == filename:
                    node = compiled.program.line_nodes.get(lineno - first + 2)
        what = f"{node.op}{where(node.scope or None)}" if node is not None else "the body"
        msg = f"scan step {t} of {attrs['length']}: {what} failed: {e}"
        if isinstance(e, TapernnError):
            err = type(e)(msg)
        elif isinstance(e, IndexError):
            err = ValueRangeError(msg)
        else:
            err = TapernnError(msg)
        if node is not None:  # (the program names its module: Compiled._locate)
            err.located = (node.op, node.scope, f"step {t} of {attrs['length']}", str(e))
        return err

    return fail
