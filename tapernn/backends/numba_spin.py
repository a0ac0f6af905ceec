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
        if _X86:
            fnty = ir.FunctionType(ir.VoidType(), [])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(cache=keyed(), nogil=True)
def wait(flag, rounds):
    """Whether flag[0] became nonzero within `rounds` reads (8 pauses apart); without the GIL."""
    for _ in range(rounds):
        if _load_acquire(flag) != 0:
            return True
        for _ in range(8):
            _pause()
    return _load_acquire(flag) != 0
