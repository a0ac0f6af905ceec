"""Running compiled programs: `compile` (passes, memory plan, code generation), `Compiled`
(checks its inputs and turns a failure into an error naming the node). The GC pause and the
quiet-NumPy fast path: tuning.py. Programs that never run at once sharing one arena: arena.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import own_threads
from .accounting import peak_bytes
from .backends import auto_calls, deferred
from .backends.packed import rule as packed_rule
from .blas import (
    SMALL_GEMM_FLOPS,
    largest_gemm_flops,
    limiter,
    measuring,
    program_threads,
    thread_flops,
    vector_products,
)
from .blas_tuning import ThreadChoice
from .codegen import Program, fused_scratch, nested
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    DTypeError,
    ShapeError,
    TapernnError,
    ValueRangeError,
    where,
)
from .graph import Graph, Node
from .memory import DEFAULT_OPTIONS, BufferPlan, PlanOptions, plan_buffers
from .passes import CompileReport, Pass, check_passes, default_passes, run_passes
from .passes.driver import Dump
from .passes.layout import layout_session
from .tuning import gc_paused, quiet_enter, quiet_exit


class Compiled:
    """A compiled graph: call it with arrays (one per graph input) to get its outputs.

    `graph` is the optimised graph, `report` the CompileReport, `source` the generated program.
    Returns one array for a single-output graph traced from a function returning a Var, otherwise
    a list of arrays in `graph.outputs` order. Returned arrays are the caller's: later calls
    never write into them.
    """

    def __init__(
        self, graph: Graph, program: Program | None = None, report: CompileReport | None = None
    ):
        self.graph = graph
        self.program = program or Program(graph)
        self.source = self.program.source
        self.report = fill_report(report or CompileReport(), graph, self.program.plan)
        self.report.backend = self.program.backend
        self.report.compiled_kernels = len(self.program.compiled_kernels)
        self.report.fallbacks = list(self.program.fallbacks)
        self.report.loops = list(self.program.sub_reports)
        if any(loop.call_bytes for loop in self.report.loops):  # (the panels a loop packs)
            peak = peak_bytes(graph, self.program.plan, self.report.loops)
            self.report.plan = dataclasses.replace(self.report.plan, peak_bytes=peak)
        self._single = graph.meta.single_output and len(graph.outputs) == 1
        self.largest_gemm_flops = max(
            [largest_gemm_flops(graph.nodes)]
            + [loop.largest_gemm_flops for loop in self.report.loops]
        )
        # what the BLAS thread choice reads: 0.0 unless big GEMMs dominate (blas.BIG_SHARE)
        self.thread_flops = thread_flops(graph.nodes)
        # "auto": measured per argument signature when the GEMMs are big enough (blas_tuning)
        self.threads = ThreadChoice(
            self.largest_gemm_flops,
            1 if self.thread_flops < SMALL_GEMM_FLOPS else None,
            vector_products(graph.nodes),
        )
        self.program_kernel = None  # numba: the whole-program kernel's switch (numba_program)
        for name, *_ in self.program.sites:  # (a kernel failing in the background reports here)
            self.program.bound[name].report = self.report
        self.report.backend_note = self.program.backend_note
        # PlanOptions.own_threads: this program's calls own both cores (own_threads.py)
        self.split_runners: tuple = ()  # (own_mode: the loops that split their rows)
        self.own = own_mode(self) if not nested() else "off"
        if self.own == "off" and self.program.options.bias_in_gemm and not nested():
            from .own_bias import fuse_unowned  # (the whole GEMM onto its bias: blas_gemm)

            fuse_unowned(self.program, graph.nodes)
        if self.program.backend == "numba" and not nested():
            from .backends import background, numba_program

            numba_program.attach(self)
            # numbers the calls: which ones ask for and which run numba's kernels
            auto = deferred(self.program.options.backend)
            background.install_gate(self, auto_calls() if auto else None)

    def __call__(self, *arrays: Any) -> Any:
        inputs = self.graph.inputs
        if len(arrays) != len(inputs):
            names = [n.name for n in inputs]
            raise ArgumentError(
                f"compiled program takes {len(inputs)} arrays {names}, got {len(arrays)}"
            )
        args = [check_input(n, a) for n, a in zip(inputs, arrays)]
        outs = self.run(args)
        return outs[0] if self._single else list(outs)

    def run(self, args: Sequence[np.ndarray]) -> tuple:
        """Run on already-checked arrays (the fast path modules use), with the BLAS threads
        `tn.set_blas_threads` picks for this program's matmuls: under "auto", measured
        (blas_tuning) when they are big enough, else blas.thread_flops's rule."""
        if self.own != "off" and (
            self.own == "on" or own_threads.allowed() and own_threads.splitting(self.split_runners)
        ):
            return own_threads.run(self._run, args)
        if self.threads.tunable and measuring():
            pool = limiter.pool_count()
            if pool > 1:
                return self.threads.run(self._run, args, pool)
        threads = program_threads(self.thread_flops)
        if threads is None:
            return self._run(args)
        limiter.enter(threads)  # (not a `with`: its generator costs microseconds per call)
        try:
            return self._run(args)
        finally:
            limiter.exit()

    def _run(self, args: Sequence[np.ndarray]) -> tuple:
        """NumPy's floating-point warnings are off inside: NaN/Inf inputs give NaN/Inf outputs
        (criteria and clip_grad_norm raise NumericError on them) without warnings naming
        internal ops."""
        token = quiet_enter()
        try:
            return self.program.fn(*args)
        except TapernnError as e:
            raise self._locate(e, type(e)) from None
        except IndexError as e:
            raise self._locate(e, ValueRangeError) from None
        except (ValueError, TypeError, FloatingPointError) as e:
            raise self._locate(e, TapernnError) from None
        finally:
            quiet_exit(token)

    def blas_threads(self) -> str:
        """The BLAS thread count this program's calls run with and, under "auto", what was
        measured: one line per argument signature (blas_tuning); then, per dtype of its GEMMs,
        whether this BLAS gives the same bits with 1 and 2 threads and for a GEMM's row or
        column halves (blas_bits, probed once per process)."""
        from .blas import _matmuls
        from .blas_bits import blas_bits

        dtypes = {n.dtype.name for n, _ in _matmuls(self.graph.nodes)}
        probed = [blas_bits(d).describe() for d in ("float32", "float64") if d in dtypes]
        return "\n".join([self.threads.describe(), *probed])

    def __repr__(self) -> str:
        return f"<Compiled {len(self.graph.nodes)} nodes, {self.report.kernels} kernels>"

    def _locate(self, e: BaseException, cls: type) -> TapernnError:
        """`e` raised by the program, as `cls` naming the node that failed: the module it was
        recorded in when a module traced it (graph.meta.scopes: a user knows
        nn.LookupTable(5 -> 2), not the `embedding` op), its scope path and step; a loop's
        failure names its body's node and step (scan_run: `e.located`)."""
        scopes = self.graph.meta.scopes
        inner = getattr(e, "located", None)  # (op, scope, "step t of T", cause): a loop's step
        if inner is not None and inner[1] in scopes:
            op, scope, step, cause = inner
            at = f"in {scope!r}, {step}" if scope else step
            return cls(f"{scopes[scope]} ({at}): {op} failed: {cause}")
        node = self.program.failing_node(e)
        if node is None:
            return cls(str(e))
        if node.scope in scopes:
            at = where(node.scope or None, node.step)
            return cls(f"{scopes[node.scope]}{at}: {node.op} failed: {e}")
        return cls(f"{node.op} failed{where(node.scope or None, node.step)}: {e}")


def own_mode(compiled: Compiled) -> str:
    """PlanOptions.own_threads for this program ("off" when it has no loop that splits its batch
    rows); binds the splitting matmul and writes the report's line."""
    mode = compiled.program.options.own_threads
    if mode == "off" or not compiled.report.loops:  # (no loop: no line in the report)
        return "off"
    fn = compiled.program.fn
    defaults = dict(fn.__kwdefaults__ or {})
    # (the program's loop runners that split their rows: scan_split.SplitRunner)
    compiled.split_runners = tuple(v for v in defaults.values() if hasattr(v, "split_calls"))
    split = bool(compiled.split_runners)
    compiled.report.threads = own_threads.note(split, mode)
    if not split:
        return "off"
    if "np_matmul" in defaults:
        defaults["np_matmul"] = own_threads.matmul
        fn.__kwdefaults__ = defaults
        if compiled.program.options.bias_in_gemm:  # (the bias add in the GEMM's halves)
            from .own_bias import fuse

            fuse(compiled.program)
        if compiled.program.options.gemm_in_slab:  # (the packed kernel, panels in the slab)
            from .own_room import fuse as fuse_room

            fuse_room(compiled.program)
    return mode


def check_input(n: Node, a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.shape != n.shape:
        raise ShapeError(
            f"input {n.name!r}{where(n.scope or None, n.step)}: expected shape "
            f"{n.shape}, got {arr.shape}"
        )
    if arr.dtype != n.dtype:
        if arr.dtype.kind in "iu" and n.dtype.kind in "iu":
            cast = arr.astype(n.dtype)
            if np.can_cast(arr.dtype, n.dtype) or np.array_equal(cast, arr):
                return cast
            raise ValueRangeError(  # (the cast would wrap: id 257 in int8 is 1)
                f"input {n.name!r}{where(n.scope or None, n.step)}: values beyond the "
                f"{n.dtype} the program was traced with, got {arr.dtype} in "
                f"[{arr.min()}, {arr.max()}]; trace it with {arr.dtype}"
            )
        raise DTypeError(f"input {n.name!r}: expected dtype {n.dtype}, got {arr.dtype}")
    return arr


def with_backend(options: PlanOptions, backend: str | None) -> PlanOptions:
    """`options` with its backend set (None: as it is; "numpy" / "numba", see tapernn.backends)."""
    return options if backend is None else dataclasses.replace(options, backend=backend)


_unroller: list[Callable[[Graph], Graph]] = []


def set_unroller(fn: Callable[[Graph], Graph]) -> None:
    """Hand the executor `unroll_scans` (the loops layer, above this one) for `unroll=True`."""
    _unroller[:] = [fn]


def compile(
    graph: Graph,
    passes: Sequence[Pass] | None = None,
    options: PlanOptions = DEFAULT_OPTIONS,
    dump: Dump | str | None = None,
    backend: str | None = None,
    unroll: bool = False,
    written: tuple[int, ...] = (),
) -> Compiled:
    """Optimise `graph` with `passes` (default: the default pipeline) and build its program:
    verify -> passes -> plan -> lower -> report. `options` tunes the buffer planner and the
    code generator (PlanOptions); `dump` sees the graph after each pass (run_passes);
    `backend` ("numpy" / "numba"; default: tapernn.get_backend()) lowers the fused groups;
    `unroll=True` compiles every scan loop unrolled into its steps (`tn.unroll_scans`);
    `written`: outputs the program writes into arrays its caller passes (codegen.Program)."""
    options = with_backend(options, backend)
    with gc_paused():
        verify_input(graph)
        if unroll and _unroller:
            graph = _unroller[0](graph)
        pipeline = pipeline_of(passes)
        graph, report = optimise(graph, pipeline, options, dump=dump)
        plan = plan_buffers(graph, scratch=fused_scratch, options=options)
        program = Program(graph, plan=plan, options=options, passes=pipeline, written=written)
        return Compiled(graph, program, report)


def optimise(
    graph: Graph, pipeline: Sequence[Pass], options: PlanOptions, dump: Dump | str | None = None
) -> tuple[Graph, CompileReport]:
    """`run_passes` under the options' loop layout (passes/layout.py); its choices noted."""
    with layout_session(options.layout, packed_rule(options), options.backend) as session:
        graph, report = run_passes(graph, pipeline, dump=dump)
    report.notes.extend(session.notes)
    return graph, report


def verify_input(graph: Graph) -> None:
    if not isinstance(graph, Graph):
        raise ArgumentTypeError(
            f"tn.compile takes a Graph (from tn.trace or tn.grad), got {type(graph).__name__}"
        )
    graph.verify()


def pipeline_of(passes: Sequence[Pass] | None) -> list[Pass]:
    return default_passes() if passes is None else check_passes(passes)


def fill_report(report: CompileReport, graph: Graph, plan: BufferPlan) -> CompileReport:
    """`report` (the passes' records) completed with the plan's bytes and kernels."""
    report.plan = plan.stats
    report.resident_bytes = plan.stats.planned_bytes  # arena.compile_shared: the shared total
    report.fused_groups = [
        [ins[0] for ins in n.attrs["program"]] for n in graph.nodes if n.op == "fused"
    ]
    return report
