"""The caller's bounded wait at an owned split's join, without the GIL (issue 19, BENCHMARKS.md
"h256G"): `wait(flag, rounds)` reads flag[0] (an int64 the worker sets to 1 when its half has
ended) with acquire ordering up to `rounds` times, a few `pause` instructions apart, and says
whether it was set. On this VM an idle vCPU halts at once (guest halt polling off): a caller
that blocks on a lock while the worker ends its half is woken through the host, tens of
microseconds late at every join; spinning a little first keeps its vCPU awake. Imported only
once numba is (own_threads._Spin.prepare, in the background worker)."""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic
from numba.np.arrayobj import make_array

from .numba_opt import keyed

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _load_acquire(typingctx, arr):
    """arr[0] of a 1-D int64 array, an atomic load with acquire ordering (re-read every time:
    the worker writes it from another thread)."""
    if not isinstance(arr, types.Array) or arr.dtype != types.int64:
        return None

    def codegen(context, builder, signature, args):
        data = make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "acquire", 8)

    return types.int64(arr), codegen


@intrinsic
def _pause(typingctx):
    """x86's `pause` (a spin-wait hint: the core backs off); nothing elsewhere."""

    def codegen(context, builder, signature, args):
        _emit_pause(builder)
        return context.get_dummy_value()

    return types.void(), codegen


def _emit_pause(builder) -> None:
    """The `pause` instruction at the builder (x86), nothing elsewhere."""
    if _X86:
        fnty = ir.FunctionType(ir.VoidType(), [])
        builder.call(
            cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause"), []
        )


@njit(cache=keyed(), nogil=True)
def wait(flag, rounds):
    """Whether flag[0] became nonzero within `rounds` reads (8 pauses apart); without the GIL."""
    for _ in range(rounds):
        if _load_acquire(flag) != 0:
            return True
        for _ in range(8):
            _pause()
    return _load_acquire(flag) != 0


# ---- the native column split's barrier (backends/step_columns.py) ------------------------------

# the barrier word array (int64): each thread's arrivals (its own cache line), the abort word,
# each thread's cycles waited (read by tools and tests: the barrier's wait), the panel counter
# (`claim`)
LINE = 8
ABORT = 2 * LINE
WAITED = 3 * LINE
CLAIMS = 5 * LINE
WORDS = 6 * LINE


def _yield_symbol() -> str:
    """The name sched_yield is linked under in the barrier's code, registered with LLVM once (its
    address in this process's libc), or "" where there is none (then the barrier pauses only)."""
    import ctypes
    import ctypes.util

    from llvmlite import binding

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        address = ctypes.cast(libc.sched_yield, ctypes.c_void_p).value
    except (OSError, AttributeError, TypeError):
        return ""
    if not address:
        return ""
    binding.add_symbol("tapernn_sched_yield", address)
    return "tapernn_sched_yield"


_YIELD = _yield_symbol()


@intrinsic
def _load_at(typingctx, arr, index):
    """arr[index] of a 1-D int64 array, an atomic load with acquire ordering."""
    if not isinstance(arr, types.Array) or arr.dtype != types.int64:
        return None

    def codegen(context, builder, signature, args):
        ary = make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(ary.data, [args[1]]), "acquire", 8)

    return types.int64(arr, types.intp), codegen


@intrinsic
def _store_at(typingctx, arr, index, value):
    """arr[index] = value for a 1-D int64 array, an atomic store with release ordering (the
    writes before it are seen by a thread whose acquire load reads it)."""
    if not isinstance(arr, types.Array) or arr.dtype != types.int64:
        return None

    def codegen(context, builder, signature, args):
        ary = make_array(signature.args[0])(context, builder, args[0])
        builder.store_atomic(args[2], builder.gep(ary.data, [args[1]]), "release", 8)
        return context.get_dummy_value()

    return types.void(arr, types.intp, types.int64), codegen


@intrinsic
def _fetch_add(typingctx, arr, index, value):
    """arr[index] += value for a 1-D int64 array, atomically (acquire and release): the value
    before."""
    if not isinstance(arr, types.Array) or arr.dtype != types.int64:
        return None

    def codegen(context, builder, signature, args):
        ary = make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.atomic_rmw("add", ptr, args[2], "acq_rel")

    return types.int64(arr, types.intp, types.int64), codegen


@intrinsic
def _cycles(typingctx):
    """The CPU's cycle counter (llvm.readcyclecounter: rdtsc on x86; 0 where there is none)."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@intrinsic
def _yield(typingctx):
    """sched_yield() (the thread gives its core to another runnable one), or a pause."""

    def codegen(context, builder, signature, args):
        if _YIELD:
            fnty = ir.FunctionType(ir.IntType(32), [])
            builder.call(cgutils.get_or_insert_function(builder.module, fnty, _YIELD), [])
        else:
            _emit_pause(builder)
        return context.get_dummy_value()

    return types.void(), codegen


@njit(cache=keyed(), nogil=True)
def arrive(bar, me, n, spins):
    """Thread `me` (0 or 1) reaches the barrier the `n`-th time: whether the other has too, or
    False once the abort word is set (the other side failed). Spins `spins` rounds (8 pauses
    each), then yields its core each round; the cycles waited added to its WAITED words (the
    first at an even `n`, the second at an odd one)."""
    _store_at(bar, me * LINE, n)
    other = (1 - me) * LINE
    if _load_at(bar, other) >= n:
        return _load_at(bar, ABORT) == 0
    start = _cycles()
    rounds = 0
    while _load_at(bar, other) < n:
        if _load_at(bar, ABORT) != 0:
            return False
        if rounds < spins:
            for _ in range(8):
                _pause()
        else:
            _yield()
        rounds += 1
    bar[WAITED + me * LINE + (n & 1)] += _cycles() - start
    return _load_at(bar, ABORT) == 0


@njit(cache=keyed(), nogil=True)
def claim(bar, chunk):
    """The first of the next `chunk` panels of the GEMM the two threads run at once that neither
    has claimed yet: the panel counter's value before this claim added `chunk`."""
    return _fetch_add(bar, CLAIMS, chunk)


@njit(cache=keyed(), nogil=True)
def unclaim(bar):
    """The panel counter back to 0: by one thread past the barrier that ends a GEMM (each
    thread's last claim came before its arrival there; the next GEMM's claims come after the
    next barrier, which sees this store)."""
    _store_at(bar, CLAIMS, 0)
