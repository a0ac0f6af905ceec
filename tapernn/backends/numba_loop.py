"""Whole-loop numba kernels for rolled scans (issue 19): a scan node's compiled body becomes ONE
@njit function running every step (its source: backends/loop_source.py), called with scan_run's
runner convention `run(*carries, *xs, *invariants, out=None) -> slab`, same slab layout. A body
with a node the generator does not lower keeps the Python runner (LoopReport.kernel says why)."""

from __future__ import annotations

import builtins
import dataclasses
import math
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..blas import limiter
from . import LOOP_MAX_SIZE, auto_calls, background, deferred, numba_interleave
from .loop_source import LoopSource
from .loop_values import reads, shifted_layout
from .numba_backend import Unsupported, _load

_lock = threading.RLock()  # held while a kernel loads or compiles
# held only to look up or add a kernel: a compile of the caller's thread (plan_kernel) must not
# wait for the worker thread's compile of another kernel (BENCHMARKS.md hcold3)
_registry_lock = threading.Lock()
_loops: dict[tuple, LoopKernel] = {}  # by source and constants (constants_key): see there
# bodies with a value larger than this keep the Python loop (with numba's fused-group kernels):
# there NumPy's SIMD ufuncs beat the kernel's scalar loops more than the loop overhead costs. An
# LSTM training step (fwd + bwd programs, T = 50, float32, 1 BLAS thread, load ~5), Python loop
# / kernel: B x 4H = 4 x 128: 3.2x faster, 8 x 256: 1.5x; 32 x 256: 0.91x, 16 x 512: 0.76x,
# 32 x 1024: 0.85x
MAX_SIZE = LOOP_MAX_SIZE


class LoopKernel:
    """One generated whole-loop kernel: its module loaded from the numba cache directory and
    compiled (or loaded from numba's cache) for the argument types of the calls that asked
    (background.type_key of the slab, the inputs, the hoisted values and the constants)."""

    def __init__(
        self,
        source: str,
        constants: list[np.ndarray],
        work: list[tuple[str, int]] | None = None,
        reads_xs_first: bool = False,
    ):
        self.source, self.constants = source, constants
        # every read of a step's xs rows comes before the step's first write into the slab (no
        # carry or ys is a view of an xs: xs_read_first), so its rows may lie in the slab's
        self.reads_xs_first = reads_xs_first
        # (dtype name, elements) per workspace: the kernel's last parameters, 1-D C arrays its
        # caller makes once (a runner's own, or a slice of the calling program kernel's)
        self.work = work or []
        self.kernel: Callable | None = None
        self.error = ""
        self.types: set[tuple] = set()
        # its loops' own sizes and workspaces (LoopInstance), by dims and workspace sizes
        self.instances: dict[tuple, Any] = {}

    def has(self, key: tuple | None = None) -> bool:
        return self.kernel is not None and (key is None or key in self.types)

    def signature(self, key: tuple) -> tuple:
        """numba's signature of a call with arrays of types `key` (slab, then the arrays after
        length, reverse and dims)."""
        from numba import types

        sig = background.numba_signature(key)
        return (sig[0], types.int64, types.boolean, types.int64[::1], *sig[1:])

    def prepare(self, key: tuple) -> Callable | None:
        with _lock:
            if self.error:
                return None
            try:
                if self.kernel is None:
                    self.kernel = _load(self.source)
                if key not in self.types:
                    with numba_interleave.small_trips(self.source):
                        self.kernel.compile(self.signature(key))
                    self.types.add(key)
                    if "np.dot(" in self.source:  # scipy's BLAS is loaded now
                        limiter.refresh()
            except Exception as e:  # noqa: BLE001 -- any failure: the Python loop runs
                self.kernel = None
                self.error = f"numba failed: {background.failure(e)}"
                return None
            return self.kernel


class LoopInstance:
    """One loop's use of a shared LoopKernel (its text has no sizes: loop_source's lift):
    `dims`, the int64 array of the sizes its kernel reads, and `work`, its workspaces'
    (dtype name, elements); `concrete` its text with those numbers written in (what the kernel
    computes for it). Everything else is the shared kernel's: one compile for every size."""

    def __init__(self, shared: LoopKernel, dims: list[int], work: list[tuple[str, int]]):
        self.shared, self.work = shared, work
        self.dims = np.array(dims, np.int64)
        self.concrete = ""

    def __getattr__(self, name: str) -> Any:  # kernel, error, types, constants, prepare, ...
        if name == "shared":  # (not set yet: copy/pickle probing a bare instance)
            raise AttributeError(name)
        return getattr(self.shared, name)


def constants_key(constants: list[np.ndarray]) -> tuple:
    """A kernel's constants are arguments its runner binds from its handle: two programs with
    one source but other constants (NormStabilizer(1.0) and (0.3)) need two handles, or the
    second runs with the first's values (a silent wrong answer, before)."""
    return tuple((c.dtype.str, c.shape, c.tobytes()) for c in constants)


def make_work(work: list[tuple[str, int]]) -> list[np.ndarray]:
    """A kernel's workspaces (LoopKernel.work), made once by the caller that owns them."""
    return [np.empty(size, np.dtype(dtype)) for dtype, size in work]


def work_bytes(work: list[tuple[str, int]]) -> int:
    return sum(size * np.dtype(dtype).itemsize for dtype, size in work)


def plan(compiled: Any, attrs: dict, fixed: list[int]) -> tuple[LoopInstance | None, str]:
    """(kernel handle, "") for `compiled` (scan_run's compiled body: .graph, .prologue), or
    (None, why not): its sizes and workspaces its own, its kernel shared with every loop of
    the same text and constants."""
    graph, nc, nx = compiled.graph, attrs["n_carry"], attrs["n_xs"]
    live = [k for k in range(nc) if k not in fixed]
    layout = shifted_layout(attrs) if attrs.get("shifted") else None
    gen = LoopSource(graph, nc, nx, live, layout)
    try:
        source = numba_interleave.trip_mark() + gen.source()
    except Unsupported as e:
        return None, f"unsupported: {e}"
    with _registry_lock:
        key = (source, constants_key(gen.constants))
        shared = _loops.get(key)
        if shared is None:
            shared = _loops[key] = LoopKernel(source, gen.constants, [], xs_read_first(gen))
        sizes = (tuple(gen.dims), tuple(gen.work_sizes()))
        handle = shared.instances.get(sizes)
        if handle is None:
            handle = shared.instances[sizes] = LoopInstance(shared, gen.dims, gen.work_sizes())
            handle.concrete = gen.concrete
    return handle, ""


def xs_read_first(gen: LoopSource) -> bool:
    """Whether kernel `gen` reads step t's xs rows before it writes anything into the slab in
    step t: every body value but a view is computed into a workspace buffer, and the slab is
    written only after the step's last computation (LoopSource.write_outputs), so it does unless
    a returned value (carry or ys) is an xs or a view of one, read while the slab is written."""
    xs = {f"arg{k}" for k in range(gen.nc, gen.nc + gen.nx)}
    return not any(reads(gen.vals[o]) & xs for o in gen.graph.outputs)


def kernel_runner(
    handle: LoopInstance,
    compiled: Any,
    attrs: dict,
    dtype: np.dtype,
    xs_in_slab: bool = False,
    over: Callable | None = None,
) -> Callable:
    """`run(*inputs, out=None) -> slab` calling the loaded kernel once: C-contiguous operands,
    the prologue (invariant-only work, scan_hoist) run first. `xs_in_slab`: xs may lie in `out`
    (PlanOptions.xs_in_slab, or `out` a donated input: PlanOptions.dz_in_gates): the kernel
    writes over them when `over(out, *xs)` (scan_run.writable_over_xs: each xs row t inside
    slab row t, and the kernel reads its xs first), else a slab of its own, copied into `out`."""
    graph, nc, nx = compiled.graph, attrs["n_carry"], attrs["n_xs"]
    prologue = getattr(compiled, "prologue", None)
    n_hoisted = len(prologue.graph.outputs) if prologue else 0
    n_in = len(graph.inputs) - n_hoisted
    params = [f"a{k}" for k in range(n_in)]
    hoisted = [f"h{k}" for k in range(n_hoisted)]
    consts = [f"k{k}" for k in range(len(handle.constants))]
    works = [f"w{k}" for k in range(len(handle.work))]
    operands = [
        p if i.shape else f"asarray({p})" for p, i in zip(params + hoisted, graph.inputs)
    ]  # (a 0-d value may come as a NumPy scalar)
    sizes = [math.prod(o.shape) for o in attrs["body"].outputs]
    moved = sum(sizes[nc + j] for j, _ in attrs.get("shifted", ()))  # (length + 1 rows each)
    size = sum(sizes[:nc]) + attrs["length"] * sum(sizes[nc:]) + moved  # (scan_ir.ys_places)
    call = operands + consts + works
    xs = params[nc : nc + nx]
    if xs_in_slab and xs and over is not None and handle.reads_xs_first:
        apart = f" and over(out, {', '.join(xs)})"
    elif xs_in_slab and xs:
        apart = f" and not ({' or '.join(f'may_share(out, {x})' for x in xs)})"
    else:
        apart = ""
    lines = [
        f"def run({', '.join(params)}, out=None, *, kernel, pre, empty, copyto, asarray, "
        "may_share, over, dtype, dims" + "".join(f", {k}" for k in consts + works) + "):",
        f"    slab = out if out is not None and out.flags.c_contiguous{apart} else empty({size}, dtype)",
    ]
    if hoisted:
        lines.append(f"    {', '.join(hoisted)}, = pre({', '.join(params[nc + nx :])})")
    lines += [
        f"    kernel(slab, {attrs['length']}, {bool(attrs['reverse'])}, dims, {', '.join(call)})",
        "    if out is not None and slab is not out:",
        "        copyto(out, slab)",
        "        return out",
        "    return slab",
    ]
    namespace: dict[str, Any] = {}
    source = "\n".join(lines) + "\n"
    exec(builtins.compile(source, "<tapernn whole-loop runner>", "exec"), namespace)  # noqa: S102
    run = namespace["run"]
    run.__kwdefaults__ = {
        "kernel": handle.kernel,
        "pre": prologue.program.fn if prologue else None,
        "empty": np.empty,
        "copyto": np.copyto,
        "asarray": np.asarray,
        "may_share": np.may_share_memory,
        "over": over,
        "dtype": dtype,
        "dims": handle.dims,
        **dict(zip(consts, handle.constants)),
        **dict(zip(works, make_work(handle.work))),  # this runner's own (its Switch's)
    }
    return run


class Switch:
    """What a scan node calls on the numba backend. Call 1 computes the argument types; without
    background compilation it compiles the kernel for them and runs it; with it (background.py's
    protocol) the Python loop runs while the worker compiles, until the top-level program's
    switch call, which waits for the kernel. From then on the kernel runs -- or the Python loop
    if the kernel failed (`report.kernel` says why). Fixed per call, never a matter of timing."""

    def __init__(
        self,
        handle: LoopInstance,
        make_kernel_run: Callable,
        runner: Callable,
        ins: Any,
        backend: str | None = None,
    ):
        self.handle, self.make_kernel_run, self.runner = handle, make_kernel_run, runner
        self.later = background.enabled(deferred(backend))
        self.report: Any = None  # the LoopReport (scan_run attaches it)
        self.ready: threading.Event | None = None
        self.asked: tuple = ()  # the argument types of call 1 (the kernel's, once asked for)
        self.calls = 0
        self.fn: Callable = self._first
        slab = np.empty(0, ins.dtype)
        self.hoisted = [np.empty((0,) * len(i.shape), i.dtype) for i in ins.hoisted]
        work = [np.empty(0, np.dtype(dtype)) for dtype, _ in handle.work]

        def key(args: tuple) -> tuple:
            args = tuple(np.asarray(a) if not np.ndim(a) else a for a in args)
            return background.type_key((slab, *args, *self.hoisted, *handle.constants, *work))

        self.key = key

    def __call__(self, *args: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.fn(*args, out=out)

    def _use_kernel(self) -> Callable:
        if self.handle.has():
            self.fn = self.make_kernel_run()
        else:
            self.fn = self.runner
            if self.report is not None:
                self.report.kernel = f"Python loop (numba loop kernel: {self.handle.error})"
        return self.fn

    def _first(self, *args: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        key = self.key(args)
        if not self.later:  # compile now
            self.handle.prepare(key)
            return self._use_kernel()(*args, out=out)
        self.asked = key
        self.fn = self._pending
        return self._pending(*args, out=out)

    def _pending(self, *args: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        self.calls += 1
        if self.ready is None:
            if not background.started(self.calls):
                return self.runner(*args, out=out)
            self.ready = background.request(self.handle, self.asked)
        if not background.due(self.calls):
            return self.runner(*args, out=out)
        self.ready.wait()
        return self._use_kernel()(*args, out=out)


def when(backend: str | None) -> str:
    """The report's words on when a program's numba kernels are asked for (`backend`: its
    compile option, "auto" or not)."""
    start = auto_calls()[0] if deferred(backend) else 1
    return f" (compiled in the background from call {start})"


def lower(
    attrs: dict,
    compile_body: Callable[..., Any],
    make_runner: Callable[[Any, dict], Callable],
    options: Any,
    fixed: list[int],
    xs_in_slab: bool = False,
    over: Callable | None = None,
) -> tuple[Any, Callable, str]:
    """(compiled body, loop function, what runs the loop) for a scan on the numba backend. The
    body is compiled for the NumPy backend (its program only runs the first call, or when the
    kernel fails: its fused groups need no kernels of their own); a body the kernel cannot
    lower is compiled for `options`' backend and run by the Python loop. `over`: the kernel's
    runner's check that it may write over xs lying in `out` (scan_run.writable_over_xs)."""
    # an input over MAX_SIZE stays one of the compiled body's values: no NumPy body compiled
    # (and cached with its buffers) only to find that out
    largest = max((math.prod(i.shape) for i in attrs["body"].inputs), default=0)
    if largest <= MAX_SIZE:
        compiled = compile_body(dataclasses.replace(options, backend="numpy"))
        largest = max((math.prod(n.shape) for n in compiled.graph.nodes), default=0)
    if largest > MAX_SIZE:
        handle, why = None, f"body values of up to {largest} elements > {MAX_SIZE}"
    else:
        handle, why = plan(compiled, attrs, fixed)
    if handle is None:
        # (the NumPy compile would otherwise stay cached with buffers nothing counts or uses)
        compile_body(dataclasses.replace(options, backend="numpy"), drop=True)
        compiled = compile_body(options)
        return compiled, make_runner(compiled, attrs), f"Python loop (no numba loop kernel: {why})"
    dtype = attrs["body"].outputs[0].dtype
    prologue = getattr(compiled, "prologue", None)
    ins = SimpleNamespace(dtype=dtype, hoisted=prologue.graph.outputs if prologue else [])
    switch = Switch(
        handle,
        lambda: kernel_runner(handle, compiled, attrs, dtype, xs_in_slab, over),
        make_runner(compiled, attrs, hold_copies=False),  # (the fallback: holds no late-xs copies)
        ins,
        options.backend,
    )
    later = ""
    if switch.later:
        later = when(options.backend)
        if later.endswith(" 1)"):  # numba's import and setup start now, before call 1 asks
            background.start_numba()
    return compiled, switch, f"numba loop kernel{later}"
