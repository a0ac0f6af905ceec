"""OpenBLAS's GEMM, same bits, faster a thread (issue 19, BENCHMARKS.md "hbig"): `run(a, b, out)`
computes out = a @ b through own_gemm.py's kernel where that is known to give exactly the bits
np.matmul (OpenBLAS) gives, and says whether it did (else the caller runs np.matmul); and
`run_bias(a, b, bias, out)`: out = a @ b + bias with the bits of blas_gemm.gemm_bias (the bias
copied into out, OpenBLAS's GEMM with beta = 1 onto it), where that would run. The halves of an
owned call's time-batched GEMMs call them (own_threads._mm, _mm_half; _mm_bias: the input
projection; "hbig", "hnblk").

Why the same bits: OpenBLAS computes each element of C as one FMA chain over k in order within
each of its K blocks (driver/level3.c: depth GEMM_Q, the rest below 2 Q in two near halves), the
first block stored (beta = 1: added onto C's bias), each later one added to C (one rounding);
own_gemm does the same with Q and GEMM_UNROLL_M of OpenBLAS 0.3.31's SkylakeX kernels (`Q`,
`UNROLL`), at one BLAS thread (at two, OpenBLAS's bits differed at some shapes: it runs only
where the pools hold one, as in an owned call). Nothing assumes that: each (dtype, m, k, n,
the operands' layouts, bias or not) is checked once per process on random operands of that
shape -- both computed, compared bit for bit -- and runs OpenBLAS for good if they differ
(another BLAS, version, kernel or small-matrix path; at 0.3.31 float64 with n % 8 == 4 the last
4 columns differ: declined). So which of the two runs a GEMM (the kernel ready or not, on a
thread or the other) never changes a result: no call-count protocol is needed.

Only where numba is already imported (a NumPy-only process never imports it for this), on an
AVX-512 CPU (packed.isa), for GEMMs of at least MIN_ROWS x MIN_DEPTH x MIN_COLS (and of at most
BLOCKED_ROWS rows where b needs N blocks: where that measured faster); the kernel compiles for a
dtype at that dtype's first GEMM, in background.py's worker (at once without background
compilation), and OpenBLAS runs until it is there."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .. import blas_gemm, tuning
from ..blas import limiter
from . import background, compile_child, packed

Q = {4: 448, 8: 384}  # OpenBLAS's GEMM_Q by itemsize (0.3.31, SkylakeX: SGEMM / DGEMM)
UNROLL = 16  # its GEMM_UNROLL_M there (a K block split in two halves: the first a multiple)
MIN_ROWS, MIN_DEPTH, MIN_COLS = 64, 64, 48  # (below: OpenBLAS; measured: tools/own_gemm_ab.py)
# b's K block x N block of panels at most this many bytes: in L2 (2 MiB) with the rest (own_gemm's
# N blocks; "hnblk": 256 / 512 KiB ran 1.05-1.16x OpenBLAS's time, 1.5 MiB 1.03)
PANEL_BYTES = 1 << 20
# more than one N block only up to this many rows: there own_gemm ran 0.92-0.98x OpenBLAS's time
# ((512, 512, 2048), (1024, 1600, 2048) a transposed, (1600, 512, 1024) + bias, (2048, 6400,
# 1024)), from (2400, 4096, 1024) and (3200, ...) 0.98-1.04x (OpenBLAS's rate grows with m,
# own_gemm's does not): no gain ("hnblk")
BLOCKED_ROWS = 2048
ENABLED = [True]  # (A/B: False runs OpenBLAS everywhere)
RAN = [0]  # GEMMs run by the kernel so far (tests: it ran)
RAN_BIAS = [0]  # of which with a bias (run_bias)

# (dtype, m, k, n, a transposed, b transposed, bias) -> same bits as OpenBLAS
_checked: dict[tuple, bool] = {}
_lock = threading.Lock()
_local = threading.local()  # .work: {dtype: aligned work buffer} a thread
_NO_BIAS = {np.dtype(t).str: np.empty(0, t) for t in (np.float32, np.float64)}


def run(a: Any, b: Any, out: Any) -> bool:
    """out = a @ b by the kernel, if it gives np.matmul's bits here (the module docstring);
    False: nothing written, the caller runs np.matmul."""
    return _run(a, b, out, None)


def run_bias(a: Any, b: Any, bias: Any, out: Any) -> bool:
    """out = a @ b + bias (1-D, one row over out's columns) by the kernel, where
    blas_gemm.gemm_bias would run (the bias copied into out, OpenBLAS's GEMM onto it: beta = 1)
    and the kernel gives its bits here (checked per shape against it, as `run`'s against
    np.matmul); False: nothing written, the caller runs gemm_bias."""
    if blas_gemm.bias_call(a, b, bias, out) is None or not bias.flags.c_contiguous:
        return False
    return _run(a, b, out, bias)


def _run(a: Any, b: Any, out: Any, bias: Any) -> bool:
    if not ENABLED[0] or not background.numba_imported() or packed.isa() != "avx512":
        return False
    if any(get() != 1 for _, get in limiter.pools()):  # (OpenBLAS's bits at one thread)
        return False
    if tuning.errors_asked():  # (a user's np.errstate "raise": np.matmul's flags checked)
        return False
    kernel = _HANDLE.take(out.dtype)
    if kernel is None:
        return False
    mod = _HANDLE.module
    if not (mod.fits(a, b, out) and (a.flags.c_contiguous or b.flags.c_contiguous)):
        return False  # (one C: the compiled signatures)
    if not all(x.flags.writeable for x in (a, b, bias) if x is not None):
        return False  # (the signatures' arrays are writeable: a read-only input or bias)
    m, k = a.shape
    n = out.shape[1]
    if m < MIN_ROWS or k < MIN_DEPTH or n < MIN_COLS:
        return False
    if m > BLOCKED_ROWS and min(k, Q[out.itemsize]) * n * out.itemsize > PANEL_BYTES:
        return False
    key = (out.dtype.str, m, k, n, a.strides[1] != a.itemsize, b.strides[1] != b.itemsize)
    key += (bias is not None,)
    same = _checked.get(key)
    if same is None:
        same = _check(kernel, key)
    if not same:
        return False
    _gemm(kernel, a, b, out, _NO_BIAS[out.dtype.str] if bias is None else bias)
    RAN[0] += 1
    if bias is not None:
        RAN_BIAS[0] += 1
    return True


def _gemm(kernel: Any, a: Any, b: Any, out: Any, bias: Any) -> None:
    m, k = a.shape
    n, size = out.shape[1], out.itemsize
    nt = _HANDLE.module.block_tiles(k, n, size, Q[size], PANEL_BYTES)
    kernel(a, b, out, _work(_HANDLE.module, m, k, n, out.dtype, nt), Q[size], UNROLL, nt, bias)


def _check(kernel: Any, key: tuple) -> bool:
    """Whether the kernel gives OpenBLAS's bits at `key`'s shape and layout (random operands,
    both computed: np.matmul, or with a bias blas_gemm.gemm_bias; remembered for the process).
    Its arrays live in a mapping of their own (`_outside`), freed after."""
    dt, m, k, n, transposed, b_transposed, with_bias = key
    dt = np.dtype(dt)
    rng = np.random.default_rng(m * 1_000_003 + k * 1009 + n)
    sizes = (m * k, k * n, m * n, m * n, n)
    flat = _outside(sum(sizes), dt)
    cuts = np.cumsum((0, *sizes))
    a, b, ours, ref, bias = (flat[cuts[i] : cuts[i + 1]] for i in range(5))
    a = a.reshape((k, m)).T if transposed else a.reshape((m, k))
    b = b.reshape((n, k)).T if b_transposed else b.reshape((k, n))
    ours, ref = ours.reshape((m, n)), ref.reshape((m, n))
    a[...] = rng.standard_normal(a.shape)
    b[...] = rng.standard_normal(b.shape)
    bias[...] = rng.standard_normal(n)
    if with_bias:
        _gemm(kernel, a, b, ours, bias)
        same = blas_gemm.gemm_bias(a, b, bias, ref) and bool(np.array_equal(ours, ref))
    else:
        _gemm(kernel, a, b, ours, _NO_BIAS[dt.str])
        np.matmul(a, b, out=ref)
        same = bool(np.array_equal(ours, ref))
    with _lock:
        _checked[key] = same
    return same


def _work(mod: Any, m: int, k: int, n: int, dt: np.dtype, nt: int) -> np.ndarray:
    """This thread's work buffer for the shape: kept, grown as needed (a fresh one of MiBs
    costs ~0.15 ms of page faults a call), at most ~1.3 MiB (PANEL_BYTES of b's panels, MC x Q
    of a's rows, a tile; ~2.9 MiB f32 / ~4.2 MiB f64 where N blocks share a chunk of ROWS
    packed rows) -- the kernel's scratch as OpenBLAS's per-thread buffer is its,
    outside NumPy's allocator like that one (`_outside`): a program's reported memory counts
    neither."""
    need = mod.work_size(m, k, n, dt.itemsize, Q[dt.itemsize], nt)
    bufs = getattr(_local, "work", None)
    if bufs is None:
        bufs = _local.work = {}
    buf = bufs.get(dt.str)
    if buf is None or buf.size < need:
        buf = bufs[dt.str] = _outside(need, dt)
    return buf


def _outside(size: int, dt: np.dtype) -> np.ndarray:
    """A 1-D array of `size` elements in an anonymous memory mapping of its own (page-aligned;
    unmapped when the array goes): memory NumPy's allocator, and so tracemalloc, never sees.
    Private (Python's default for -1 is MAP_SHARED: a forked child and its parent would write
    the same scratch)."""
    import mmap

    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    raw = mmap.mmap(-1, max(size * dt.itemsize, 1), flags=flags)
    return np.frombuffer(raw, dt, count=size)


class _Handle:
    """own_gemm's kernel (background.py's handle protocol: prepare / has / kernel / error): three
    signatures per float dtype -- `a` and b C, or either of any layout ("A": a transposed view,
    dW's dG.T or the projection's W.T), out C; the work buffer, the bias -- which arrays of
    other layouts convert to (compiling more is disabled). Typed "A", a C `a` ran ~3 % slower;
    each signature costs 2-5 s of a cold compile, so a dtype's three are compiled at its first
    GEMM (`take`), not both dtypes' at any first: a float32 model compiled float64's too, ~10 s
    of CPU more (BENCHMARKS.md "hcold6")."""

    def __init__(self) -> None:
        self.kernel: Any = None
        self.module: Any = None
        self.error = ""
        self.types: set[str] = set()  # (the dtype names compiled)
        self.asked: set[str] = set()
        self.children: dict[str, Any] = {}  # (dtype name -> its compile_child job)
        self._lock = threading.Lock()
        self._asking = threading.Lock()

    def has(self, key: tuple | None = None) -> bool:
        return self.kernel is not None and (key is None or set(key[0]) <= self.types)

    def prepare(self, key: tuple) -> None:
        """Compile the signatures of each dtype name in key[0] not compiled yet."""
        with self._lock:
            todo = [name for name in key[0] if name not in self.types]
            if self.error or not todo:
                return
            try:
                mod = kernels()
                mod.gemm.disable_compile(False)
                try:
                    for sig in [sig for name in todo for sig in _signatures(name)]:
                        mod.gemm.compile(sig)
                finally:
                    mod.gemm.disable_compile()
                self.module = mod
                self.kernel = mod.gemm
                self.types.update(todo)  # (last: `take` hands out a dtype's kernel from here)
            except Exception as e:  # noqa: BLE001 -- any failure: OpenBLAS runs it
                self.error = f"numba failed: {background.failure(e)}"

    def take(self, dtype: Any) -> Any:
        """The kernel once ready for `dtype` (float32 or float64); None meanwhile, for other
        dtypes and after a failure. A dtype's signatures are compiled by a child process where
        compile_child.py starts one (the kernel gives OpenBLAS's bits: which GEMMs run before
        it is loaded changes no result), loaded from numba's cache once it is done, else
        compiled here; with background compilation either only from a call of that dtype that
        finds the worker idle (queued behind programs' kernels, its ~10 s cold compile would
        hold their switch calls; started before them, its child would take a step loop's:
        BENCHMARKS.md "hcold6"), without it at once."""
        name = np.dtype(dtype).name
        if name not in self.types and name not in self.asked and name in _DTYPES:
            with self._asking:  # (an owned call's two threads ask at once: one child)
                if name not in self.asked:
                    self._ask(name)
        return self.kernel if name in self.types else None

    def _ask(self, name: str) -> None:
        job = self.children.get(name)
        if job is not None and job.proc.poll() is None:
            return  # (the child compiles it: OpenBLAS meanwhile)
        if background.enabled() and background.activity()[2]:
            return  # (the worker busy: its jobs and their children first -- a step loop's)
        if job is None and self._child(name):
            return
        if job is not None:
            job.wait()  # (its end: now a load from numba's cache, or a compile if it failed)
        self.asked.add(name)
        if background.enabled():
            background.request(self, ((name,),))
        else:
            self.prepare(((name,),))

    def _child(self, name: str) -> bool:
        """Whether a child process now compiles dtype `name`'s signatures (compile_child)."""
        from pathlib import Path

        try:
            mod = kernels()
            text = Path(mod.__file__).read_text()
        except Exception:  # noqa: BLE001 -- (prepare then says why)
            return False
        path = Path(mod.__file__).parent
        sigs = _signatures(name)
        job = compile_child.ask(mod.__name__, text, "gemm", sigs, path, mod.gemm, f":{name}")
        if job is not None:
            self.children[name] = job
        return job is not None


def _signatures(name: str) -> list[tuple]:
    """own_gemm.gemm's three signatures for dtype `name` (see _Handle)."""
    from numba import from_dtype, types

    dt = from_dtype(np.dtype(name))
    any2, c2 = types.Array(dt, 2, "A"), types.Array(dt, 2, "C")
    row = types.Array(dt, 1, "C")  # (the work buffer, the bias)
    ints = (types.intp,) * 3
    return [(a, b, c2, row, *ints, row) for a, b in ((c2, c2), (any2, c2), (c2, any2))]


_DTYPES = ("float32", "float64")


def kernels() -> Any:
    """own_gemm.py imported from a copy in the kernel cache directory, named by its text's
    digest (numba's cache files land beside it; packed._kernel_module's way)."""
    import hashlib
    import sys
    from pathlib import Path

    from .kernel_cache import import_written
    from .numba_backend import cache_dir
    from .numba_setup import setup

    setup()  # (before any numba import of a kernel module: numba_setup.py)
    source = (Path(__file__).resolve().parent / "own_gemm.py").read_bytes()
    name = f"tapernn_own_gemm_{hashlib.sha1(source).hexdigest()[:20]}"
    if name in sys.modules:
        return sys.modules[name]
    return import_written(cache_dir(), name, source)


_HANDLE = _Handle()
