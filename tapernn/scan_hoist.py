"""Loop-invariant code motion on a compiled scan body: work the body's own passes made from
the invariants alone (the per-gate weights concatenated by gate fusion, [W_i; W_f; ...]) runs
once per loop call, in a prologue program, and the step program reads its results."""

from __future__ import annotations

from typing import Any

from .backends import resolve_backend
from .backends.background import PACKED_NOTE
from .backends.packed import request_planned
from .executor import Compiled, compile, optimise, pipeline_of
from .graph import Graph, Node
from .passes import CompileReport
from .scan_pack import attach_reports, pack_loop_weights

_FREE = ("input", "constant", "transpose", "reshape", "getitem")  # views: nothing to save


def compile_hoisted(
    body: Graph, n_variant: int, passes: Any, options: Any, written: tuple[int, ...] = ()
) -> Compiled:
    """`body` (its first `n_variant` inputs the carries and xs, the rest invariants) compiled
    with `passes`; if the optimised body computes anything from the invariants alone, that
    part is compiled apart: the result's `.prologue` (invariants -> hoisted values) runs once
    per loop call and its values are the step program's extra trailing inputs. `written`: the
    outputs the step program writes into its caller's arrays (codegen.Program)."""
    graph, report = optimise(loop_level(body, n_variant), pipeline_of(passes), options)
    if options.packed_gemm and resolve_backend(options.backend) == "numba":
        # step GEMMs over loop weights packed once per loop call (scan_pack.py)
        packed = pack_loop_weights(graph, _invariants(graph, n_variant)[0])
        if packed is not graph:
            graph = packed
            report.notes.append(PACKED_NOTE)
            dtypes = {n.dtype for n in graph.nodes if n.op == "packed_matmul"}
            request_planned(dtypes, options.backend)  # (its kernel compiles from now)
    invariant, cheap = _invariants(graph, n_variant)
    moved = (invariant - cheap) | _packed_transposes(graph, cheap)
    if not moved:
        compiled = _plain(graph, options, report, written)
        attach_reports(compiled)
        return compiled
    stay = [n for n in graph.nodes if n.op != "input" and n not in moved]
    read = {i for n in stay for i in n.inputs} | set(graph.outputs)
    hoisted = [n for n in graph.nodes if n in moved and n in read]
    stand_in = {
        n: Node(
            "input",
            (),
            {"kind": "param"},
            n.shape,
            n.dtype,
            step=n.step,
            scope=n.scope,
            phase=n.phase,
            name=f"hoisted{k}_{n.op}",
        )
        for k, n in enumerate(hoisted)
    }
    inputs = list(graph.inputs) + [stand_in[n] for n in hoisted]
    env: dict[Node, Node] = dict(stand_in)
    nodes: list[Node] = list(inputs)
    for n in stay:
        ins = tuple(env.get(i, i) for i in n.inputs)
        env[n] = n if ins == n.inputs else n.with_inputs(ins)
        nodes.append(env[n])
    outputs = [env.get(o, o) for o in graph.outputs]
    step = Graph(nodes, inputs, outputs, graph.meta).eliminate_dead_code()
    pre = Graph(
        [n for n in graph.nodes if n in invariant],
        list(graph.inputs[n_variant:]),
        hoisted,
        graph.meta,
    ).eliminate_dead_code()
    compiled = _plain(step, options, report, written)
    attach_reports(compiled)
    compiled.prologue = _plain(pre, options, None)
    compiled.report.notes.append(
        f"{len(hoisted)} value(s) of the invariants alone computed once per loop call: "
        f"{', '.join(n.op for n in hoisted)}"
    )
    return compiled


def _invariants(graph: Graph, n_variant: int) -> tuple[set[Node], set[Node]]:
    """(nodes of the invariants alone, those of them that are inputs, constants or views of
    them: left in the step program)."""
    invariant = set(graph.inputs[n_variant:])
    cheap = set(invariant)
    for n in graph.nodes:
        if n.op == "constant":
            invariant.add(n)
            cheap.add(n)
        elif n.op != "input" and n.inputs and all(i in invariant for i in n.inputs):
            invariant.add(n)
            if n.op in _FREE and all(i in cheap for i in n.inputs):
                cheap.add(n)
    return invariant, cheap


def _packed_transposes(graph: Graph, cheap: set[Node]) -> set[Node]:
    """Transposed views of invariants read only as packed step GEMMs' weights (`dz @ W^T` of
    a custom cell's `x @ W` in the reverse loop): made once in the prologue, beside its pack,
    so the step program has no per-step statement the numba step loops cannot translate."""
    readers: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n)
    return {
        n
        for n in cheap
        if n.op == "transpose"
        and n not in graph.outputs
        and readers.get(n)
        and all(
            r.op == "pack_panels" or (r.op == "packed_matmul" and r.inputs[1] is n)
            for r in readers[n]
        )
    }


def loop_level(body: Graph, n_variant: int) -> Graph:
    """`body` with its invariants (inputs from `n_variant` on) as loop-level values (step None):
    a template traced at step k tags the weights it reads with k, and the passes fuse only
    products with loop-level weights (fuse_gate_matmuls: h @ U_i, h @ U_f, ... -> one GEMM,
    its weight concat then computed once per loop call here)."""
    fresh = {
        i: Node(
            "input",
            (),
            i.attrs,
            i.shape,
            i.dtype,
            step=None,
            scope=i.scope,
            phase=i.phase,
            name=i.name,
        )
        for i in body.inputs[n_variant:]
        if i.step is not None
    }
    if not fresh:
        return body
    env: dict[Node, Node] = dict(fresh)
    nodes: list[Node] = []
    for n in body.nodes:
        if n not in fresh:
            ins = tuple(env.get(i, i) for i in n.inputs)
            env[n] = n if ins == n.inputs else n.with_inputs(ins)
        nodes.append(env[n])
    inputs = [env.get(i, i) for i in body.inputs]
    return Graph(nodes, inputs, [env.get(o, o) for o in body.outputs], body.meta)


def _plain(
    graph: Graph, options: Any, report: CompileReport | None, written: tuple[int, ...] = ()
) -> Compiled:
    """`graph`, already optimised, compiled without further passes (their records: `report`)."""
    compiled = compile(graph, passes=[], options=options, written=written)
    compiled.prologue = None
    if report is not None:
        compiled.report.passes[:0] = report.passes
        compiled.report.notes[:0] = report.notes
    return compiled
