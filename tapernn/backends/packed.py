"""The packed recurrent GEMM of the numba backend (issue 19; BENCHMARKS.md "hgemm"): a loop's
weight W (K, N), invariant over the steps, is packed once per loop call into panels of NR
columns (`pack_panels`), and every step's `a @ W` runs a register-blocked AVX-512 microkernel
over those panels (packed_kernels.py) instead of OpenBLAS, which packs W again at every call.

`PackedSite` is what a step program calls, `site(a, W, panels, out)`: NumPy's `matmul(a, W)`
until the kernel takes over -- at the top-level program's packed call with background
compilation (backends.packed_call, after the switch call: the driver's cold compile is not on
the switch call's wait; which call ran which lowering is fixed by the call count, never by
timing), else at its first call -- and NumPy again if the kernel failed (said
in the step program's report, lifted into a model's, and by a RuntimeWarning: `failed`). The
kernel splits the panels over numba's threads when the BLAS pool runs with more than one thread
in this call (blas_tuning measures the program with either count), in a forked child never
(the OpenMP pool does not survive a fork)."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Any

import numpy as np

from .. import aligned
from ..blas import limiter
from ..errors import TapernnError
from . import background

# the microkernel's geometry per instruction set: (vector bits, vectors per panel row NV); a call
# computes MR rows of `a` x 3 vectors taken across the panels (packed_kernels.MR, TV). AVX-512
# (32 zmm registers): panels of 4 vectors, 8 x 3 accumulators ("hloopI"; 4 x 4, a panel a call,
# before: hgemm). AVX2 (16 ymm): panels of 2 vectors, 16 float32 / 8 float64 columns (BENCHMARKS.md
# "havx2", Zen 3, the LSTM step GEMMs at 16 and 32 rows: 0.64-0.82x OpenBLAS's 1-thread time),
# computed 4 x 3 vectors a call across the panels (packed_kernels.TV, "h512": 12 accumulators,
# the fastest measured) -- 24-column panels would pad a 1024-column weight to 1032 columns, and
# no longer fit the weight's zeroed `.grad` (pack_scratch: the loop peak), where 16 columns
# divide 4H at every H that is a multiple of 4 (8 float64 columns: every even H; AVX-512's 64 /
# 32: multiples of 16 / 8); 6 x 2, 8 x 1,
# 2 x 4, 5 x 2 were slower, 3 x 4 spilled (1.5-1.8x OpenBLAS's time), and AVX-512's kernel, its
# 512-bit vectors split in two by LLVM and its accumulators spilled, 1.7-2.9x
GEOMETRY = {"avx512": (512, 4), "avx2": (256, 2)}
# which step GEMMs a @ W are packed (scan_pack): W of at least MIN_ELEMENTS elements (smaller
# ones keep OpenBLAS: = loop_operands.MIN_ELEMENTS, the NN step GEMMs of hspeed) and `a` of at
# least MIN_ROWS rows: at B = 1 OpenBLAS's GEMV beat the 4-row microkernel 1.3-1.75x (hgemm2,
# BENCHMARKS.md; at B = 2 it lost up to 4x to it at (512, 2048))
MIN_ELEMENTS = 65536
MIN_ROWS = 2


def rule(options: Any) -> tuple[int, int] | None:
    """(MIN_ROWS, MIN_ELEMENTS) when programs compiled with `options` (a PlanOptions) pack
    their loops' step GEMMs (PlanOptions.packed_gemm, the numba backend, a CPU with a kernel:
    `isa`), else None: what the layout rule and contiguous_loop_weights read (a packed loop
    stays batch-major, its weight is not copied contiguous first). Not under "auto": it lowers
    a program with a loop too large for a loop kernel -- every loop a weight gets packed in --
    on NumPy (auto_choice)."""
    from . import policy

    if not options.packed_gemm or policy(options.backend) != "numba":
        return None
    return (MIN_ROWS, MIN_ELEMENTS) if available() else None


def isa() -> str | None:
    """The instruction set the packed kernel is built for on this CPU: "avx512" (avx512f),
    "avx2" (avx2 and fma), None (OpenBLAS runs the step GEMMs). The flags are read once into
    `_avx512[0]` and `_avx2[0]`, which tests may set (True in `_avx512[0]`: AVX-512's kernel,
    correct on any AVX2 CPU too -- LLVM splits its vectors, slower)."""
    if _avx512[0] is None:
        _avx512[0], _avx2[0] = _detect()
    if _avx512[0]:
        return "avx512"
    return "avx2" if _avx2[0] else None


def first_cpu(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first CPU's block of `cpuinfo` as {field: value} ("flags", "vendor_id", ...); OSError
    when it cannot be read."""
    fields: dict[str, str] = {}
    with open(cpuinfo) as f:
        for line in f:
            if not line.strip():
                break  # (the first CPU's block ends)
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
    return fields


def _detect(cpuinfo: str = "/proc/cpuinfo") -> tuple[bool, bool]:
    """(avx512f, avx2 and fma) of this CPU: `cpuinfo`'s flags, else LLVM's host features, else
    neither."""
    try:
        flags = set(first_cpu(cpuinfo).get("flags", "").split())
    except OSError:
        try:
            from llvmlite import binding

            features = binding.get_host_cpu_features()
            flags = {name for name in ("avx512f", "avx2", "fma") if features.get(name)}
        except Exception:  # noqa: BLE001 -- unknown: keep OpenBLAS
            flags = set()
    return "avx512f" in flags, {"avx2", "fma"} <= flags


_avx512: list[bool | None] = [None]
_avx2: list[bool | None] = [None]


def available() -> bool:
    """Whether this CPU has a packed kernel (`isa`)."""
    return isa() is not None


def panel_width(dtype: Any, kind: str | None = None) -> int:
    """NR: columns per panel of the kernel for instruction set `kind` (default: `isa()`, or
    AVX-512's on a CPU without one): NV vectors, 64 float32 / 32 float64 on AVX-512, 16 / 8
    on AVX2."""
    bits, nv = GEOMETRY[kind or isa() or "avx512"]
    return nv * bits // (8 * np.dtype(dtype).itemsize)


def isa_of(panels: np.ndarray) -> str:
    """The instruction set whose kernel `panels` (pack_panels') were packed for, from their
    width; TapernnError if none."""
    for kind in GEOMETRY:
        if panels.ndim == 3 and panels.shape[2] == panel_width(panels.dtype, kind):
            return kind
    raise TapernnError(
        f"packed GEMM: expected panels of {' or '.join(str(panel_width(panels.dtype, k)) for k in GEOMETRY)}"
        f" {panels.dtype} columns, got shape {panels.shape}"
    )


def pack_panels(w: np.ndarray, out: np.ndarray | None = None, nr: int | None = None) -> np.ndarray:
    """W (K, N) as (ceil(N / NR), K, NR): panel j holds columns j*NR.. row by row, zero-padded
    (NR: `nr`, else panel_width)."""
    k, n = w.shape
    nr = nr or panel_width(w.dtype)
    shape = (-(-n // nr), k, nr)
    if out is None:
        out = aligned.empty(shape, w.dtype)  # (the kernel's vector loads: cache lines)
    full = n // nr
    h = handle()
    # numba's packs (compiled after the packed GEMM's kernel, any width) write only an out of
    # the panels' own shape (they check no bounds: another shape, NumPy's copy raises)
    ours = out.flags.c_contiguous and out.shape == shape and ((w.dtype.str,),) in h.packs.types
    if ours and TRANSPOSED_PACK[0] and w.strides[0] == w.itemsize and w.T.flags.c_contiguous:
        # a transposed view of a C weight: its rows scattered into the panels (BENCHMARKS "h256")
        _kernel_module(h.isa).pack_rows(w.T, out)
        return out
    rows = w.flags.c_contiguous or w.strides[1] == w.itemsize and w.strides[0] >= n * w.itemsize
    if ours and COLUMN_PACK[0] and rows:
        # a C weight, or a column slice of one (scan_columns.pack's halves): its rows cut into
        # the panels (BENCHMARKS.md "h256c", "h512b")
        _kernel_module(h.isa).pack_cols(w, out)
        return out
    if full and w.strides[1] == w.itemsize:  # (k, full, nr) -> (full, k, nr) in one copy
        np.copyto(out[:full], w[:, : full * nr].reshape(k, full, nr).transpose(1, 0, 2))
    else:  # (a transposed view: its reshape would copy the whole W first) panel by panel
        for j in range(full):
            np.copyto(out[j], w[:, j * nr : (j + 1) * nr])
    if full < shape[0]:
        out[full] = 0
        out[full, :, : n - full * nr] = w[:, full * nr :]
    return out


class _Packs:
    """pack_panels' numba packs of instruction set `isa`'s module, per dtype: pack_rows (a
    transposed view of a C weight) and pack_cols (a C weight, or a column slice of one) -- a
    job of their own after the serial driver's (`_Handle`), made after the jobs queued before
    it (a cold model's fused groups: the worker takes the queue's near end): no call waits for
    them, NumPy's copies give the same panels meanwhile; in the serial driver's job they were
    ~1.2 s of a cold switch call's wait (BENCHMARKS.md "hcold8")."""

    queued_last = True  # (background's worker: behind the jobs a switch call waits for)

    def __init__(self, isa: str = "avx512") -> None:
        self.isa = isa
        self.kernel: Any = None  # (background's handle protocol: the packs are in `types`)
        self.error = ""
        self.types: set[tuple] = set()  # (dtypes pack_rows and pack_cols are compiled for)
        self._lock = threading.Lock()

    def has(self, key: tuple | None = None) -> bool:
        return key in self.types if key is not None else bool(self.types)

    def prepare(self, key: tuple) -> None:
        with self._lock:
            if self.error or key in self.types:
                return
            try:  # (if one fails, NumPy's copies pack for good)
                pk = _kernel_module(self.isa)
                pk.pack_rows.compile(_pack_signature(key))
                pk.pack_cols.compile(_pack_signature(key))
                pk.pack_cols.compile(_pack_signature(key, "A"))  # (a C weight's column slice)
                self.types.add(key)
            except Exception as e:  # noqa: BLE001 -- NumPy's copies pack
                self.error = _failure(e)


class _Handle:
    """The serial driver of instruction set `isa`'s kernel (background.py's handle protocol:
    prepare / has / kernel / error); its prepare then has pack_panels' packs (`_Packs`) and the
    parallel driver made (in the background worker after it, or at once without background
    compilation). The parallel driver gives the serial one's bits (each panel is computed by
    the same code in either) and the packs NumPy's panels, so when either arrives does not
    matter: a packed call waits for the serial driver alone."""

    # its job goes behind every job of background's queue not so marked (the fused groups and
    # loop kernels the switch call waits for: the driver is not due before the packed call)
    queued_last = True

    def __init__(self, isa: str = "avx512") -> None:
        self.isa = isa
        self.kernel: Any = None
        self.error = ""
        self.types: set[tuple] = set()
        self.packs = _Packs(isa)
        self._lock = threading.Lock()

    def has(self, key: tuple | None = None) -> bool:
        return self.kernel is not None and (key is None or key in self.types)

    def child_recipe(self, key: tuple) -> tuple:
        """(module, function, cache folder, this handle's (module, class, arguments)): what a
        compile child builds to run `prepare(key)` -- the serial driver, and the packs with it
        (the child compiles in place: compile_child.offered)."""
        from .numba_backend import cache_dir

        name = _MODULE_NAMES.get(GEOMETRY[self.isa]) or _module_text(self.isa)[0]
        return name, "packed_matmul_serial", cache_dir(), (__name__, "_Handle", (self.isa,))

    def prepare(self, key: tuple) -> None:
        with self._lock:
            if self.error or key in self.types:
                return
            try:
                from .numba_setup import setup

                setup()  # (before packed_kernels' numba imports: numba_setup.py)
                pk = _kernel_module(self.isa)
                pk.packed_matmul_serial.compile(_signature(key))
                self.kernel = pk.packed_matmul_serial
                self.types.add(key)
            except Exception as e:  # noqa: BLE001 -- any failure: NumPy runs it
                self.error = _failure(e)
                return
        for after in (self.packs, _PARALLELS[self.isa] if PARALLEL else None):
            if after is not None and background.enabled():
                background.request(after, key)
            elif after is not None:
                after.prepare(key)


class _Parallel:
    """The prange driver, used only under a thread-safe numba threading layer (omp, tbb: the
    workqueue layer aborts the process when two threads run parallel kernels at once)."""

    queued_last = True  # (as the serial driver's)

    def __init__(self, isa: str = "avx512") -> None:
        self.isa = isa
        self.kernel: Any = None
        self.error = ""
        self.types: set[tuple] = set()
        self._lock = threading.Lock()

    def prepare(self, key: tuple) -> None:
        with self._lock:
            if self.error or key in self.types:
                return
            try:
                from numba import types

                pk = _kernel_module(self.isa)
                fn = pk.packed_matmul_parallel
                fn.compile((*_signature(key), types.int64))
                dt = np.dtype(key[0][0])
                fn(
                    np.zeros((1, 1), dt),
                    np.zeros((1, 1, panel_width(dt, self.isa)), dt),
                    np.zeros((1, 1), dt),
                    1,
                )
                import numba

                if numba.threading_layer() not in ("omp", "tbb"):
                    self.error = f"numba threading layer {numba.threading_layer()}: not thread-safe"
                    return
                self.types.add(key)
                self.kernel = fn
            except Exception as e:  # noqa: BLE001 -- any failure: the serial driver runs
                self.error = _failure(e)


def _signature(key: tuple) -> tuple:
    from numba import from_dtype, types

    arr = types.Array(from_dtype(np.dtype(key[0][0])), 2, "C")
    return (arr, types.Array(arr.dtype, 3, "C"), arr)


def _pack_signature(key: tuple, layout: str = "C") -> tuple:
    """pack_rows' types: (w (N, K) C, out (panels, K, NR) C); pack_cols' also with w of
    `layout` "A" (a column slice of a C weight)."""
    a, panels, _ = _signature(key)
    return (a.copy(layout=layout), panels)


def _failure(e: Exception) -> str:
    return f"numba failed: {background.failure(e)}"


def _kernel_module(kind: str | None = None) -> Any:
    """packed_kernels.py for instruction set `kind` (default `isa()`, else AVX-512's) imported
    from a copy in the kernel cache directory (numba_backend.cache_dir, $TAPERNN_KERNEL_CACHE)
    with its geometry line set to GEOMETRY[kind], named by that text's digest: numba's
    cache=True files land beside it, so a cold kernel cache is cold for these drivers too, each
    geometry has its own, and an installed package's directory is never written."""
    name = _MODULE_NAMES.get(GEOMETRY[kind or isa() or "avx512"])  # (pack_panels asks at every
    if name in sys.modules:  # loop call: the file read and its digest cost ~0.17 ms, "h256c")
        return sys.modules[name]
    from .kernel_cache import import_written
    from .numba_backend import cache_dir

    name, source = _module_text(kind)
    if name in sys.modules:
        return sys.modules[name]
    # (written again and imported again if another process's prune removed it meanwhile)
    return import_written(cache_dir(), name, source)


def _module_text(kind: str | None = None) -> tuple[str, bytes]:
    """(name, text) of `_kernel_module`'s copy of packed_kernels.py for instruction set `kind`."""
    import hashlib
    from pathlib import Path

    bits, nv = GEOMETRY[kind or isa() or "avx512"]
    source = (Path(__file__).resolve().parent / "packed_kernels.py").read_bytes()
    line = b"VEC_BITS, NV = 512, 4  # "
    if source.count(line) != 1:
        raise TapernnError("packed_kernels.py: its geometry line is missing")
    source = source.replace(line, f"VEC_BITS, NV = {bits}, {nv}  # ".encode())
    name = f"tapernn_packed_{hashlib.sha1(source).hexdigest()[:20]}"
    _MODULE_NAMES[(bits, nv)] = name
    return name, source


_MODULE_NAMES: dict[tuple[int, int], str] = {}  # (vector bits, NV) -> _kernel_module's name
_HANDLES = {kind: _Handle(kind) for kind in GEOMETRY}
TRANSPOSED_PACK = [True]  # pack_panels of a transposed view by packed_kernels.pack_rows (A/B)
COLUMN_PACK = [True]  # pack_panels of a C weight by packed_kernels.pack_cols (A/B)
_PARALLELS = {kind: _Parallel(kind) for kind in GEOMETRY}


def handle(kind: str | None = None) -> _Handle:
    """The serial driver's handle for instruction set `kind` (default `isa()`, else AVX-512)."""
    return _HANDLES[kind or isa() or "avx512"]


def request_planned(dtypes: set, backend: str | None) -> None:
    """Ask the worker for the serial driver's kernel for each of `dtypes` when a program
    compiled for `backend` packs a loop's step GEMMs (scan_hoist): its one signature (the
    dtype: PackedSite's key) is known from the plan, so compiling starts at compile time, not
    at the program's first call (the switch call of "auto"'s numba plan, nn.auto_plans, waits
    only for what is unfinished then) -- in the worker's queue behind the fused groups, not
    before a model's first call has asked for them (_Handle.queued_last). Not when kernels
    compile at their first call."""
    from . import deferred

    if deferred(backend) or not background.enabled():
        return
    for dtype in sorted(np.dtype(d).str for d in dtypes):
        background.request(handle(), ((dtype,),))


def module_of(kernel: Any) -> Any:
    """The packed_kernels copy a driver `kernel` (a _Handle's or _Parallel's) comes from (its
    _panels: scan_columns, step_loop)."""
    return sys.modules[kernel.py_func.__module__]


def width_of(kernel: Any, dtype: Any) -> int:
    """NR of a driver `kernel`: its module's geometry."""
    pk = module_of(kernel)
    return pk.NV * pk.lanes(dtype)


# The parallel driver is opt-in ($TAPERNN_PACKED_PARALLEL=1): numba's OpenMP pool, once used,
# slowed the other libraries of the process -- in tools/bench.py's run at (32, 50, 256) f32 torch's
# nn.LSTM step went from 27.4 ms to 43.7 ms and the NumPy reference 13 % slower, while tapernn's
# numba step gained nothing over the serial driver at the pool's two threads (BENCHMARKS.md, stop
# 27). The serial driver gives the same bits at every thread count (each panel is the same code).
PARALLEL = os.environ.get("TAPERNN_PACKED_PARALLEL", "") == "1"
_forked = [False]
os.register_at_fork(after_in_child=lambda: _forked.__setitem__(0, True))


def _threads() -> int:
    if _forked[0]:
        return 1
    pools = limiter.pools()
    return pools[0][1]() if pools else 1


def run_kernel(kernel: Any, a: np.ndarray, panels: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = a @ W through the serial driver `kernel`, or the parallel one (opt-in: PARALLEL)
    when the BLAS pool runs with more threads in this call and it is ready (a and out copied
    when not C-contiguous)."""
    nr = width_of(kernel, panels.dtype)
    if panels.ndim != 3 or panels.shape[2] != nr or not (a.dtype == panels.dtype == out.dtype):
        raise TapernnError(
            f"packed GEMM: expected {nr}-column {a.dtype} panels, got {panels.shape} {panels.dtype}"
        )
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    if not panels.flags.c_contiguous:
        panels = np.ascontiguousarray(panels)
    target = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    # (the pool's thread count only for the opt-in parallel driver: it is a ctypes call, which
    # releases and retakes the GIL -- a hand-off between an owned call's two halves per step)
    threads = min(_threads(), panels.shape[0]) if PARALLEL else 1
    parallel = _PARALLELS[isa_of(panels)] if threads > 1 else None
    if parallel is not None and ((a.dtype.str,),) in parallel.types:
        parallel.kernel(a, panels, target, threads)
    else:
        kernel(a, panels, target)
    if target is not out:
        np.copyto(out, target)
    return out


# the start of a compile report line saying a packed kernel failed (CompileReport.joined
# lifts such lines from loop bodies into a model's report)
FAILED = "packed GEMM:"
_warned: set[str] = set()  # failures already warned about (once per process each)


def failed(report: Any, why: str) -> None:
    """A packed kernel that failed, never silently: a line in `report`'s fallbacks (the step
    program's CompileReport) and a RuntimeWarning, once per process for each reason."""
    line = f"{FAILED} {why} (NumPy's matmul runs the loop's step GEMMs)"
    if report is not None and line not in report.fallbacks:
        report.fallbacks.append(line)
    if line not in _warned:
        _warned.add(line)
        warnings.warn(f"tapernn: {line}", RuntimeWarning, stacklevel=3)


class PackedSite:
    """One step program's call of the packed GEMM (the module docstring); `report`: that
    program's CompileReport (scan_pack.attach_reports), told if the kernel fails; `run`: what
    runs the kernel, run_kernel's signature (scan_columns.run: the column split). The kernel is
    the one of the instruction set its panels were packed for (isa_of: their width, fixed when
    the program was compiled)."""

    __slots__ = ("calls", "handle", "kernel", "key", "ready", "report", "run")

    def __init__(self) -> None:
        self.calls = 0
        self.handle: _Handle | None = None
        self.kernel: Any = None
        self.key: tuple | None = None
        self.ready: threading.Event | None = None
        self.report: Any = None
        self.run: Any = run_kernel

    def __call__(
        self, a: np.ndarray, w: np.ndarray, panels: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        if out is None:
            out = np.empty((a.shape[0], w.shape[1]), w.dtype)
        if self.kernel is not None:
            return self.run(self.kernel, a, panels, out)
        self.calls += 1
        if self.calls == 1:
            self.key = ((w.dtype.str,),)
            self.handle = _HANDLES[isa_of(panels)]
            if not background.enabled():
                self.handle.prepare(self.key)
                self._take()
            else:
                self.ready = background.request(self.handle, self.key)
        elif self.ready is not None and background.packed_due(self.calls):
            self.ready.wait()
            self.ready = None
            self._take()
        if self.kernel is not None:
            return self.run(self.kernel, a, panels, out)
        return np.matmul(a, w, out=out)

    def _take(self) -> None:
        if self.handle.has(self.key):
            self.kernel = self.handle.kernel
        else:
            failed(self.report, self.handle.error or f"no kernel for {self.key[0][0]}")
