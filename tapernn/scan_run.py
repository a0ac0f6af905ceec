"""Lowering the `scan` op: its body compiled once (the caller's pass pipeline and PlanOptions,
its own memory plan), cached per body Graph object, and run by a generated loop that carries the
states from step to step and writes each step's ys into its row of the slab."""

from __future__ import annotations

import builtins
import weakref
from typing import Any

import numpy as np

from .backends import resolve_backend
from .codegen import lowering_context
from .errors import TapernnError, ValueRangeError, where
from .executor import Compiled, compile
from .graph import Graph
from .passes.driver import LoopReport
from .scan_hoist import compile_hoisted
from .scan_ir import body_dtype, offsets, slab_sizes

# body Graph -> {(passes, options): Compiled}: a template reused (another length, another
# scan node over the same body) is not compiled again
_BODIES: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()
COMPILES = [0]  # bodies compiled so far (tests count recompilations)


def compiled_body(body: Graph, passes: Any, options: Any, n_variant: int | None = None) -> Compiled:
    """`body` compiled (cached); given `n_variant` (its carries + xs), work on its invariants
    alone runs once per loop call in the result's `.prologue` (scan_hoist)."""
    key = (None if passes is None else tuple(passes), options)
    cache = _BODIES.setdefault(body, {})
    found = cache.get(key)
    if found is None:
        COMPILES[0] += 1
        # (a copy: the Compiled may hold the graph it was given, and a cached value holding its
        # weak key would keep it alive forever)
        found = cache[key] = (
            compile(body.copy(), passes=passes, options=options)
            if n_variant is None
            else compile_hoisted(body.copy(), n_variant, passes, options)
        )
    return found


def lower_scan(args: list[str], attrs: dict, out: str | None, bind: Any) -> str:
    """The scan op's line of generated source: a call of its runner (the op's `lower`)."""
    ctx = lowering_context()
    body = attrs["body"]

    def compile_body(options: Any) -> Compiled:
        n_variant = attrs["n_carry"] + attrs["n_xs"]
        return compiled_body(_without_fixed(body, attrs["n_carry"]), ctx.passes, options, n_variant)

    if resolve_backend(ctx.options.backend) == "numba":  # one @njit function for the whole loop
        from .backends import numba_loop

        fixed = fixed_carries(body, attrs["n_carry"])
        compiled, runner, kernel = numba_loop.lower(
            attrs, compile_body, make_runner, ctx.options, fixed
        )
    else:
        compiled = compile_body(ctx.options)
        runner, kernel = make_runner(compiled, attrs), "Python loop"
    c, y = slab_sizes(body, attrs["n_carry"])
    itemsize = body_dtype(body).itemsize
    report = LoopReport(
        scope=_scope_of(body),
        length=attrs["length"],
        reverse=attrs["reverse"],
        body=compiled.report,
        body_nodes=len(compiled.graph.nodes),
        carry_bytes=c * itemsize,
        step_bytes=y * itemsize,
        largest_gemm_flops=compiled.largest_gemm_flops,
        kernel=kernel,
    )
    ctx.sub_reports.append(report)
    if hasattr(runner, "report"):  # a numba loop kernel's note changes if it fails
        runner.report = report
    name = bind("scan_run", runner)
    return f"{name}({', '.join(args)}{f', out={out}' if out else ''})"


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


def _scope_of(body: Graph) -> str:
    scopes = [n.scope for n in body.nodes if n.op != "input" and n.scope]
    return min(scopes, key=len) if scopes else ""


def make_runner(compiled: Compiled, attrs: dict):
    """A function (initial carries, xs, invariants, out=None) -> slab running the compiled
    body once per step: generated source with one statement per carry, xs and ys, so a step
    costs the body program's call plus one slice per xs and one row copy per ys."""
    body, nc, nx = attrs["body"], attrs["n_carry"], attrs["n_xs"]
    length, reverse = attrs["length"], attrs["reverse"]
    n_in = len(body.inputs)
    c, y = slab_sizes(body, nc)
    carry_shapes = [o.shape for o in body.outputs[:nc]]
    y_shapes = [o.shape for o in body.outputs[nc:]]
    params = [f"a{k}" for k in range(n_in)]
    cs, xs, inv = params[:nc], params[nc : nc + nx], params[nc + nx :]
    prologue = getattr(compiled, "prologue", None)
    hoisted = [f"h{k}" for k in range(len(prologue.graph.outputs))] if prologue else []
    step_args = ", ".join(cs + [f"{x}[t]" for x in xs] + inv + hoisted)
    order = f"range({length - 1}, -1, -1)" if reverse else f"range({length})"
    head = (
        f"def run({', '.join(params)}, out=None, *, fn, fail, np_empty, np_copyto, "
        f"ys_views, carry_views, pre):"
    )
    lines = [head]
    if hoisted:  # the invariant work, once per call
        lines.append(f"    {', '.join(hoisted)}, = pre({', '.join(inv)})")
    lines += [
        (
            f"    slab = out if out is not None and out.flags.c_contiguous else "
            f"np_empty({c + length * y}, dtype)"
        )
    ]
    ys = [f"y{j}" for j in range(len(y_shapes))]
    if ys:
        lines.append(f"    {', '.join(ys)}, = ys_views(slab)")
    lines += [
        "    t = None",
        "    try:",
        f"        for t in {order}:",
        f"            r = fn({step_args})",
    ]
    live = [cv for k, cv in enumerate(cs) if k not in fixed_carries(body, nc)]
    lines += [f"            {cv} = r[{k}]" for k, cv in enumerate(live)]
    lines += [f"            {yv}[t] = r[{len(live) + j}]" for j, yv in enumerate(ys)]
    lines += ["    except Exception as e:", "        raise fail(e, t) from None"]
    if cs:
        lines.append(f"    {', '.join(f'v{k}' for k in range(nc))}, = carry_views(slab)")
        lines += [f"    v{k}[...] = {cv}" for k, cv in enumerate(cs)]
    lines += [
        "    if out is not None and slab is not out:",
        "        np_copyto(out, slab)",
        "        return out",
        "    return slab",
    ]
    namespace: dict[str, Any] = {"dtype": body_dtype(body)}
    source = "\n".join(lines) + "\n"
    exec(builtins.compile(source, "<tapernn scan runner>", "exec"), namespace)  # noqa: S102
    run = namespace["run"]
    run.__kwdefaults__ = {
        "fn": compiled.program.fn,
        "fail": _failure(compiled, attrs),
        "np_empty": np.empty,
        "np_copyto": np.copyto,
        "ys_views": _ys_views(c, length, y, y_shapes),
        "carry_views": _carry_views(carry_shapes),
        "pre": prologue.program.fn if prologue else None,
    }
    return run


def _ys_views(c: int, length: int, y: int, shapes: list[tuple]):
    spans = offsets(shapes)

    def views(slab: np.ndarray) -> list[np.ndarray]:
        rows = slab[c : c + length * y].reshape(length, y)
        return [rows[:, a:b].reshape((length, *s)) for (a, b), s in zip(spans, shapes)]

    # each view splits a contiguous run of a row, so it is a view whatever the slab's values:
    # checked once here (np.empty touches no memory), not on every loop call
    probe = np.empty(c + length * y)
    if length and not all(np.shares_memory(v, probe) for v in views(probe)):
        raise TapernnError("scan: internal error, a ys view of the slab is a copy")
    return views


def _carry_views(shapes: list[tuple]):
    spans = offsets(shapes)

    def views(slab: np.ndarray) -> list[np.ndarray]:
        return [slab[a:b].reshape(s) for (a, b), s in zip(spans, shapes)]

    return views


def _failure(compiled: Compiled, attrs: dict):
    """The error a failing step raises: the body node and the step it failed at."""

    def fail(e: BaseException, t: int | None) -> TapernnError:
        node = compiled.program.failing_node(e)
        what = f"{node.op}{where(node.scope or None)}" if node is not None else "the body"
        msg = f"scan step {t} of {attrs['length']}: {what} failed: {e}"
        if isinstance(e, TapernnError):
            return type(e)(msg)
        if isinstance(e, IndexError):
            return ValueRangeError(msg)
        return TapernnError(msg)

    return fail
