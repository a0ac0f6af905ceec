"""The fingerprint of an array get_grad_hidden_state keeps by reference (state_grads.tap_copies'
`watched`): where its bytes are and a digest of them, taken after the backward and compared on
request. Two kinds, the same guarantees (any one changed 64-bit word is seen; words moved to
other places too, but for a 2**-64-ish chance): "n", the numba kernel backends/numba_digest.digest
(one vectorised pass, ~50 GB/s), once numba is imported in this process and the kernel is loaded
-- the background worker loads or compiles it, asked at the first fingerprint after numba's
import; "z", zlib's CRC-32 and the XOR of the 64-bit words (~4 GB/s: the CRC was 60-70 % of the
tap's serial time, BENCHMARKS.md h256 and htap) before that and in NumPy-only processes. A
fingerprint is checked with the kind it was taken with. Which kind is used never changes a
computed value, only the cost of the check (issue 19, branch htap)."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable

import numpy as np

from .. import own_threads


class _Kernel:
    """backends/numba_digest.digest, loaded (or compiled) by the background worker (prepare):
    `fn` once it is, `error` if it failed (then "z" is used for good)."""

    fn = None
    error: BaseException | None = None
    asked = False

    def prepare(self, key: tuple) -> None:
        try:
            from ..backends.numba_setup import setup

            setup()
            from ..backends import numba_digest
            from ..backends.background import loaded

            probe = np.zeros(1, np.uint64)
            self.fn = loaded(numba_digest.digest, probe, nogil=True, error_model="numpy")
        except Exception as e:  # noqa: BLE001 -- "z" then, for good
            self.error = e


KERNEL = _Kernel()


def kernel():
    """The numba digest once loaded, else None; asks the background worker for it the first
    time numba is (fully) imported in this process -- a NumPy-only process never imports it."""
    fn = KERNEL.fn
    if fn is not None or KERNEL.asked:
        return fn
    from ..backends import background

    if not background.numba_imported():
        return None

    KERNEL.asked = True
    background.request(KERNEL, ())
    return KERNEL.fn


def fingerprint(a: np.ndarray, kind: str | None = None) -> tuple:
    """(address, shape, dtype, kind, digest...) of a C-contiguous `a` (module docstring);
    `kind` None: "n" when the numba kernel is loaded and `a`'s data is 8-byte aligned and
    writeable (the kernel's one compiled signature), else "z"."""
    raw = a.reshape(-1).view(np.uint8)
    address = a.__array_interface__["data"][0]
    if kind is None:
        usual = address % 8 == 0 and raw.flags.writeable
        kind = "n" if usual and kernel() is not None else "z"
    where = (address, a.shape, a.dtype.str, kind)
    if kind == "n":
        n8 = raw.nbytes - raw.nbytes % 8
        d1, d2 = KERNEL.fn(raw[:n8].view(np.uint64))
        return (*where, int(d1), int(d2), bytes(raw[n8:]))
    words = raw.view(np.uint64) if raw.nbytes % 8 == 0 else raw
    return (*where, zlib.crc32(raw), int(np.bitwise_xor.reduce(words)))


def unchanged(a: np.ndarray, fp: tuple) -> bool:
    """Whether `a` is where it was and holds the bytes it held when `fp` was taken."""
    return fingerprint(a, fp[3]) == fp


# held bytes from which state_grads.tap_copies hands its fingerprints to own_threads' worker
# while the caller copies, the caller taking any the worker has not begun once its copies are
# made (BENCHMARKS.md "hrest2": the fingerprints on the worker, the tap 0.78 -> 0.62 ms at
# (32, 50, 256) f32; "hserial": the copies shared too, in pieces, made the tap's wall median
# 0.1-0.2 ms longer on the 2-vCPU EPYC); below, the worker's wake-up costs what the digest does
APART_BYTES = 1 << 20


def copy_and_digest(held: list, copies: list, room: np.ndarray | None) -> Callable[[], list]:
    """Makes the `copies` ((destination, source) pairs: the room's, fresh arrays) and returns `() ->
    [fingerprint(a) for a in held]`. When the held arrays are >= APART_BYTES, the worker is
    there and idle (own_threads.idle_worker) and none shares memory with the room (which only
    the copies write), the worker takes the fingerprints one by one while the caller copies;
    then the caller takes those the worker has not begun (a worker late under load holds it
    up by one fingerprint at most, never by its wake-up). Else the fingerprints are taken
    here when called, after the copies. Which thread digests changes no fingerprint."""
    if (
        sum(a.nbytes for a in held) < APART_BYTES
        or not own_threads.idle_worker()
        or (room is not None and any(np.may_share_memory(a, room) for a in held))
    ):
        for dst, a in copies:
            np.copyto(dst, a)
        return lambda: [fingerprint(a) for a in held]
    done: list = [None] * len(held)
    errors: list = []
    items = iter(enumerate(held))  # (one next() at a time: the GIL)
    busy = threading.Lock()  # (held by the worker while it takes and digests an array)

    def worker() -> None:
        while True:
            with busy:
                item = next(items, None)
                if item is None:
                    return
                SHARED[0] += 1
                try:
                    done[item[0]] = fingerprint(item[1])
                except BaseException as exc:  # noqa: BLE001 (raised on the caller, below)
                    errors.append(exc)

    own_threads.submit(worker)
    try:
        for dst, a in copies:
            np.copyto(dst, a)
        for k, a in items:
            done[k] = fingerprint(a)
    finally:
        with busy:  # (the worker's array digested; none left for it to take after this)
            for _ in items:
                pass
    if errors:
        raise errors[0]
    return lambda: done


# fingerprints of copy_and_digest the worker took (a structural test reads it)
SHARED = [0]
