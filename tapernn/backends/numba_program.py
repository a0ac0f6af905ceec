"""Whole-program numba kernels (issue 19): on the numba backend a small top-level program with a
loop (every value at most numba_loop.MAX_SIZE elements: a rolled training step's forward or
backward at tutorial sizes) becomes ONE @njit function -- its GEMMs, slicing and concats as loops, its scan loops
inlined (backends/program_source.py) -- called in place of the generated NumPy program. A
program with a node the generator does not lower keeps its NumPy program (CompileReport.kernel
says why). The kernel's text reads its sizes from an argument (program_source.lift_sizes): one
compiled kernel serves the program at every sequence length T (ProgramInstance: a T's sizes)."""

from __future__ import annotations

import builtins
import math
import sys
import sysconfig
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import background, deferred, numba_interleave, numba_loop
from .numba_backend import Unsupported
from .numba_loop import MAX_SIZE, LoopInstance, LoopKernel
from .program_source import ProgramSource

_lock = threading.Lock()
_programs: dict[tuple, ProgramKernel] = {}  # by source and constants (numba_loop.constants_key)
ENABLED = [True]  # tests of the loop kernels alone switch whole-program kernels off
# programs with more loop nests keep the NumPy program: numba compiles each nest slowly (~0.1-0.3
# s cold). The built-in cells' training programs at B=1 have 10-32 (LSTM's backward: 32)
MAX_NESTS = 40
WHOLE = "numba whole-program kernel"


class ProgramKernel(LoopKernel):
    """A generated whole-program kernel (loaded and compiled as numba_loop.LoopKernel); `loops`:
    the loop kernels it calls (their modules loaded before its own imports them). Two
    specialisations at most per dtype and write flags: the program's inputs all C-contiguous,
    and all of layout "A" for calls passing any other layout (F, strided: each combination
    was a cold compile of its own, 1-4 s; numba's dispatcher, compiling disabled, converts such
    a call's arrays to the "A" one; `retry` compiles it at the first such call)."""

    def __init__(
        self,
        source: str,
        constants: list[np.ndarray],
        loops: list[LoopKernel],
        work: list[tuple[str, int]],
        n_outs: int = 0,
    ):
        super().__init__(source, constants, work)
        self.loops = loops  # (instances: its programs' own sizes, ProgramInstance)
        # (the program's arrays: after the outs, the constants and `dims`)
        self.inputs = slice(n_outs + len(constants) + 1, -len(work) if work else None)

    def signature(self, key: tuple) -> tuple:
        return background.numba_signature(key)

    def general(self, key: tuple, layout: str = "A") -> tuple:
        """`key` with every input array of another layout than C as `layout` ("A": all of
        them, as soon as one is not C)."""
        ins = key[self.inputs]
        if all(lay == "C" or not nd for _, nd, lay, _ in ins):
            return key
        ins = tuple((dt, nd, layout if nd else lay, ro) for dt, nd, lay, ro in ins)
        return key[: self.inputs.start] + ins + key[len(key[: self.inputs.stop]) :]

    def prepare(self, key: tuple) -> Callable | None:
        with numba_loop._lock:
            for loop in self.loops:
                if loop.kernel is None and not loop.error and not self.error:
                    try:
                        loop.kernel = numba_loop._load(loop.source)
                    except Exception as e:  # noqa: BLE001 -- the program kernel fails with it
                        self.error = f"its loop kernel failed: {background.failure(e)}"
            # (a first call with other layouts: the C form too, which most later calls use)
            keys = dict.fromkeys((self.general(key), self.general(key, "C")))
            if self.kernel is not None:
                self.kernel.disable_compile(False)
            try:  # (numba's hints about np.dot on "A" arrays: numba_setup.quiet_kernel_hints)
                made = [super(ProgramKernel, self).prepare(k) for k in keys][-1]
            finally:
                if self.kernel is not None:
                    self.kernel.disable_compile(True)
            return made

    def retry(self, *args: Any) -> None:
        """Call the kernel with arguments no compiled specialisation takes (a TypeError from
        numba's dispatcher, compiling disabled): compile general() of their types first; as a
        last resort let numba compile their exact types (as before this class generalised)."""
        try:
            key = self.general(background.type_key(args))
        except AttributeError:  # (not all arrays)
            key = None
        if key is not None and key not in self.types and self.prepare(key) is not None:
            try:
                return self.kernel(*args)
            except TypeError:
                pass
        self.kernel.disable_compile(False)
        with numba_interleave.small_trips(self.source):  # (numba compiles in the call)
            self.kernel(*args)


class ProgramInstance(LoopInstance):
    """One program's use of a shared ProgramKernel (its text has no sizes: program_source's
    lift_sizes): `dims`, the int64 array of the sizes its kernel reads (the loops' it calls
    after its own), and `work`, its workspaces' (dtype name, elements), both this program's
    (a sequence length T's); `source` its generated text with those numbers written in (what
    the kernel computes for it; the compiled module's is `shared.source`). Everything else is
    the shared kernel's."""

    def __init__(self, shared: ProgramKernel, dims: list[int], work: list[tuple[str, int]]):
        super().__init__(shared, dims, work)
        self.source = ""


def instance(source: str, gen: ProgramSource) -> ProgramInstance:
    """The ProgramInstance of the program `gen` generated `source` for: its kernel shared with
    every program of that text and those constants (one compile for every T), its own dims and
    workspace sizes."""
    work = gen.work_sizes()
    with _lock:
        key = (source, numba_loop.constants_key(gen.constants))
        shared = _programs.get(key)
        if shared is None:
            shared = _programs[key] = ProgramKernel(
                source, gen.constants, gen.called, work, len(gen.outs)
            )
        sizes = (tuple(gen.dims), tuple(work))
        made = shared.instances.get(sizes)
        if made is None:
            made = shared.instances[sizes] = ProgramInstance(shared, gen.dims, work)
            made.source = gen.concrete
        return made


def attach(compiled: Any) -> None:
    """Give `compiled` (a top-level executor.Compiled on the numba backend) a whole-program
    kernel when it is small and every node lowers; `compiled.report.kernel` says which."""
    if not ENABLED[0] or not compiled.program.bodies:
        return  # (a program without a loop kernel keeps numba's fused-group kernels)
    graph, report = compiled.graph, compiled.report
    if compiled.program.plan.tail_of:  # (a GEMM over a donated loop's rows: donate.py)
        report.kernel = f"NumPy program (no {WHOLE}: a GEMM over its input's rows)"
        return
    largest = max((math.prod(n.shape) for n in graph.nodes), default=0)
    if largest > MAX_SIZE:
        report.kernel = f"NumPy program (values of up to {largest} elements > {MAX_SIZE})"
        return
    try:
        gen = ProgramSource(graph, compiled.program.bodies)
        source = numba_interleave.trip_mark() + gen.source()
    except Unsupported as e:
        report.kernel = f"NumPy program (no {WHOLE}: {e})"
        return
    nests = source.count("for i0 in ")
    if nests > MAX_NESTS:
        report.kernel = f"NumPy program (no {WHOLE}: {nests} loop nests > {MAX_NESTS})"
        return
    handle = instance(source, gen)
    loops = [found[2:] for found in compiled.program.bodies.values()]
    switch = ProgramSwitch(handle, compiled, loops, gen)
    later = ""
    if switch.later:
        later = numba_loop.when(compiled.program.options.backend)
        if later.endswith(" 1)"):  # numba's import and setup start now, before call 1 asks
            background.start_numba()
    report.kernel = WHOLE + later
    report.workspace_bytes = numba_loop.work_bytes(handle.work)
    report.resident_bytes += report.workspace_bytes
    compiled.program_kernel = switch
    compiled.program.fn = switch


class ProgramSwitch:
    """What a program with a whole-program kernel calls (loop_kernel.Switch's protocol): call 1
    compiles the kernel for its argument types and runs it, or -- compiling in the background --
    the NumPy program runs while the worker compiles, until the switch call, which waits. Then the kernel takes
    the program's place (`program.fn`); if it failed, the NumPy program does, with its loops'
    own kernels, and the report says why."""

    def __init__(self, handle: ProgramInstance, compiled: Any, loops: list[tuple], gen: Any):
        self.handle, self.compiled, self.loops = handle, compiled, loops
        self.outs = [(o.shape, o.dtype) for o, _ in gen.outs.values()]
        self.returns = gen.returns
        self.numpy_fn = compiled.program.fn
        self.later = background.enabled(deferred(compiled.program.options.backend))
        self.ready: threading.Event | None = None
        self.asked: tuple = ()  # the argument types of call 1 (the kernel's, once asked for)
        self.calls = 0
        self.fn: Callable = self._first
        self.pool: Any = None  # an arena.Arena whose workspaces the kernel uses (note_loops)
        self.notes = [loop_report.kernel for _, loop_report in loops]
        self.loop_work = [loop_report.workspace_bytes for _, loop_report in loops]
        for switch, loop_report in loops:  # the loops run inside the kernel
            switch.fn = switch.runner  # (the NumPy program's first call: the Python loop)
            called = switch.handle.shared in gen.called
            loop_report.kernel = f"{'called from' if called else 'inlined in'} the {WHOLE}"
            loop_report.workspace_bytes = 0  # (slices of the program kernel's: counted there)

    def __call__(self, *args: np.ndarray) -> tuple:
        return self.fn(*args)

    def _first(self, *args: np.ndarray) -> tuple:
        try:
            outs = [np.empty(shape, dtype) for shape, dtype in self.outs]
            work = [np.empty(0, np.dtype(dtype)) for dtype, _ in self.handle.work]
            dims = self.handle.dims
            key = background.type_key((*outs, *self.handle.constants, dims, *args, *work))
        except AttributeError:  # not all arrays: the NumPy program runs
            self.handle = None
            return self._use()(*args)
        if not self.later:
            self.handle.prepare(key)
            return self._use()(*args)
        self.asked = key
        self.fn = self._pending
        return self._pending(*args)

    def _pending(self, *args: np.ndarray) -> tuple:
        self.calls += 1
        if self.ready is None:
            if not background.started(self.calls):
                return self.numpy_fn(*args)
            self.ready = background.request(self.handle.shared, self.asked)
        if not background.due(self.calls):
            return self.numpy_fn(*args)
        self.ready.wait()
        return self._use()(*args)

    def _use(self) -> Callable:
        handle = self.handle
        if handle is not None and handle.has():
            work = None if self.pool is None else self.pool.take_work(handle.work)
            n_in = len(self.compiled.graph.inputs)
            self.fn = runner(handle, self.outs, self.returns, n_in, work=work)
            if "np.dot(" not in handle.source:  # no BLAS call: no thread limits around it
                self.compiled.run = self.compiled._run
        else:
            self.fn = self.numpy_fn
            why = handle.error if handle is not None else "an argument is not an array"
            report = self.compiled.report
            report.kernel = f"NumPy program ({WHOLE} failed: {why})"
            report.resident_bytes -= report.workspace_bytes  # (never made)
            report.workspace_bytes = 0
            for (switch, loop_report), note, work in zip(self.loops, self.notes, self.loop_work):
                switch.fn = switch._first
                loop_report.kernel = note
                loop_report.workspace_bytes = work
        self.compiled.program.fn = self.fn  # no switch in between from now on
        return self.fn


def runner(
    handle: ProgramInstance,
    outs: list[tuple],
    returns: list,
    n_in: int,
    fixed: dict | None = None,
    work: list[np.ndarray] | None = None,
    into: dict | None = None,
    reuse: bool = False,
) -> Callable:
    """`run(*inputs) -> outputs`: the out arrays made, the kernel called once (source
    generated: every other name a global of its own namespace -- a cached LOAD_GLOBAL each;
    as keyword defaults, as codegen.Program binds its names, the ~20 of them were copied into
    every call's frame: 0.6 us a call). `fixed`: out index ->
    the array that out is written into on every call instead of a new one (the caller's
    scratch: nn.steady's, for outputs that never leave it; see `scratch_runner`). `work`: the
    kernel's workspaces (made here when not given): the program's own, used by one call at a
    time as its NumPy program's buffers are; no value in them outlives the call. `into`: out
    index -> an array (a parameter's `.grad`) that out's value is added to once the kernel
    has run (its out is in `fixed`; one numba_update.add_flat call for them all), returned in
    its place. `reuse`: an out made per call is the array the last call made for it again
    when nothing else holds that array any more (its reference count, `reused_count`: no
    caller's name, field or view -- a view holds its base -- so no one can see it change)
    and it still has its shape and dtype; the last call's arrays are kept for that (only by
    a caller running one call at a time: nn.steady's scratch runners)."""
    fixed, into = fixed or {}, into or {}
    base = reused_count() if reuse else None
    work = numba_loop.make_work(handle.work) if work is None else work
    works = [f"w{k}" for k in range(len(work))]
    params = [f"a{k}" for k in range(n_in)]
    made = [f"o{j}" for j in range(len(outs))]
    consts = [f"k{k}" for k in range(len(handle.constants))]
    results = [
        f"a{r[1]}" if isinstance(r, tuple) else f"g{r}" if r in into else f"o{r}" for r in returns
    ]
    new = [j for j in range(len(outs)) if j not in fixed]
    lines = [f"def run({', '.join(params)}):"]
    if base is None or not new:
        lines += [f"    o{j} = empty(s{j}, d{j})" for j in new]
    else:  # (r<j>: the last call's; None while a call runs, so a failed one leaves none)
        lines.append(f"    global {', '.join(f'r{j}' for j in new)}")
        for j in new:
            lines += [
                f"    o{j} = r{j}",
                f"    r{j} = None",
                f"    if getrefcount(o{j}) != {base} or o{j}.shape != s{j} or o{j}.dtype is not d{j}:",
                f"        o{j} = empty(s{j}, d{j})",
            ]
    call = ", ".join(made + consts + ["dims"] + params + works)
    lines += [
        "    try:",
        f"        kernel({call})",
        "    except TypeError:",
        f"        retry({call})",
    ]
    if into:  # (once the kernel has run: a call that raised added nothing)
        lines.append("    add_flat(into_grads, into_parts)")
    if base is not None and new:
        lines += [f"    r{j} = o{j}" for j in new]
    lines.append(f"    return ({', '.join(results)}{',' if len(results) == 1 else ''})")
    namespace: dict[str, Any] = {
        "kernel": handle.kernel,
        "retry": handle.retry,
        "dims": handle.dims,
        "empty": np.empty,
        "getrefcount": sys.getrefcount,
        **{f"r{j}": None for j in new},
        **{f"s{j}": outs[j][0] for j in new},
        **{f"d{j}": outs[j][1] for j in new},
        **{f"o{j}": array for j, array in fixed.items()},
        **dict(zip(consts, handle.constants)),
        **dict(zip(works, work)),
        **{f"g{j}": grad for j, grad in into.items()},
    }
    if into:
        grads = namespace["into_grads"] = tuple(into[j].reshape(-1) for j in into)
        parts = namespace["into_parts"] = tuple(fixed[j].reshape(-1) for j in into)
        namespace["add_flat"] = _add_flat_entry(grads, parts)
    source = "\n".join(lines) + "\n"
    exec(builtins.compile(source, "<tapernn whole-program runner>", "exec"), namespace)  # noqa: S102
    run = namespace["run"]
    run.kernel = handle.kernel
    run.work = work
    run.plan = (handle, outs, returns, n_in)  # (scratch_runner makes variants of it)
    return run


def scratch_runner(run: Callable, private: set[int], into: dict | None = None) -> Callable | None:
    """A variant of `run` (a `runner`) whose outs returned only at result positions in
    `private` are written into arrays made once (scratch reused by every call), for a caller
    that never lets those results outlive the next call (nn.steady: saved values, gradients
    accumulated at once), and whose other outs are the last call's arrays again where no one
    holds them (runner's `reuse`: the caller runs one call at a time); None when `run` is not
    a runner. `into`: result position -> the parameter's `.grad` that result is accumulated
    into (Torch7's backward): where that position's out is such scratch, returned only there,
    and the `.grad` an aligned writable C array of its shape and a float dtype (one dtype for
    all), the run adds it there itself (runner's `into`) and returns that `.grad` instead."""
    plan = getattr(run, "plan", None)
    if plan is None:
        return None
    handle, outs, returns, n_in = plan
    at: dict[int, list[int]] = {}  # out index -> the result positions it is returned at
    for position, r in enumerate(returns):
        if not isinstance(r, tuple):
            at.setdefault(r, []).append(position)
    fixed = {
        j: np.empty(*outs[j])
        for j, positions in at.items()
        if all(position in private for position in positions)
    }
    adds = {}
    for j in fixed:
        grad = (into or {}).get(at[j][0]) if len(at[j]) == 1 else None
        if _addable(grad, outs[j], next(iter(adds.values()), grad)):
            adds[j] = grad
    if adds and not _add_flat_ready(outs[next(iter(adds))][1], len(adds)):
        adds = {}
    # (the same workspaces: both runners are one program's, run by one caller at a time)
    return runner(handle, outs, returns, n_in, fixed, run.work, adds, reuse=True)


def _addable(grad: Any, out: tuple, first: Any) -> bool:
    """Whether add_flat can add an out of (shape, dtype) `out` into `grad` (of `first`'s dtype,
    the first such `.grad`: one tuple type)."""
    return (
        type(grad) is np.ndarray
        and grad.shape == out[0]
        and grad.dtype == out[1]
        and grad.dtype.char in "fd"
        and grad.dtype is first.dtype
        and grad.flags.c_contiguous
        and grad.flags.aligned
        and grad.flags.writeable
    )


def _add_flat_entry(grads: tuple, parts: tuple) -> Callable:
    """numba_update.add_flat's compiled entry point for these tuples' type, called without
    the dispatcher's typing of its arguments (~0.4 us a call less): every array in them is a
    view this module made (of a `.grad`, of its scratch), whose type -- 1-D, C, aligned,
    writable, its dtype -- nothing can change; the dispatcher where numba has no such entry."""
    from numba import typeof

    from .numba_update import add_flat

    overload = add_flat.overloads.get((typeof(grads), typeof(parts)))
    return getattr(overload, "entry_point", None) or add_flat


def _add_flat_ready(dtype: np.dtype, n: int) -> bool:
    """numba_update.add_flat compiled (or loaded from numba's cache) for `n` arrays of
    `dtype`, by a call on arrays of its own; False where that fails (the caller adds)."""
    try:
        from .numba_update import add_flat

        dummy = tuple(np.zeros(1, dtype) for _ in range(n))
        add_flat(dummy, dummy)
        return True
    except Exception:  # noqa: BLE001 (numba failed to compile or load it: NumPy's adds)
        return False


def reused_count() -> int | None:
    """The reference count `runner`'s reuse lines see for an array no one else holds (the
    local name and getrefcount's argument), measured once on the same lines; None where a
    reference count does not say that (not CPython, a free-threaded build, or one more holder
    does not show)."""
    if _BASE:
        return _BASE[0]
    count = None
    if sys.implementation.name == "cpython" and not sysconfig.get_config_var("Py_GIL_DISABLED"):
        ns: dict[str, Any] = {"getrefcount": sys.getrefcount, "r0": None}
        source = "def probe():\n    global r0\n    o0 = r0\n    r0 = None\n"
        source += "    n = getrefcount(o0)\n    r0 = o0\n    return n\n"
        exec(builtins.compile(source, "<tapernn reuse probe>", "exec"), ns)  # noqa: S102
        ns["r0"] = np.empty(1)
        alone = ns["probe"]()
        held = ns["r0"]  # (one more holder)
        count = alone if ns["probe"]() == alone + 1 and held is not None else None
    _BASE.append(count)
    return count


_BASE: list = []  # [reused_count's answer] once measured
