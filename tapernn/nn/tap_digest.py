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
from functools import partial

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


# bytes (held, and copied into the room) from which state_grads.tap_copies shares its work --
# the held arrays' fingerprints and the room's copies, in CHUNK_BYTES pieces -- with
# own_threads' worker, each thread taking the next piece as it gets to it (BENCHMARKS.md
# "hrest2": the fingerprints alone on the worker, the tap 0.78 -> 0.62 ms at (32, 50, 256) f32;
# "hserial": the pieces taken by whichever thread is free); below, the hand-off costs more
APART_BYTES = 1 << 20
CHUNK_BYTES = 1 << 18  # (a copy's piece: the caller waits for at most one piece of the worker's)


def copy_and_digest(held: list, copies: list, room: np.ndarray | None) -> Callable[[], list]:
    """Makes the room's `copies` ((destination, source): disjoint destinations in `room`) and
    returns `() -> [fingerprint(a) for a in held]`. When the held and copied bytes are >=
    APART_BYTES and the worker is there and idle (own_threads.idle_worker), the fingerprints
    and the copies' CHUNK_BYTES pieces are one list the caller and the worker both take the
    next item of (a late worker finds none left: the caller never waits for its wake-up, only
    for the item it is on); else all of it here (the fingerprints when called, after the
    copies). No held array may share memory with the room, which only the copies write. Which
    thread copies or digests changes no byte of a copy and no fingerprint."""
    work = sum(a.nbytes for a in held) + sum(a.nbytes for _, a in copies)
    if (
        work < APART_BYTES
        or not own_threads.idle_worker()
        or (room is not None and any(np.may_share_memory(a, room) for a in held))
    ):
        for dst, a in copies:
            np.copyto(dst, a)
        return lambda: [fingerprint(a) for a in held]
    jobs = [partial(fingerprint, a) for a in held] + _pieces(copies)
    done: list = [None] * len(jobs)
    errors: list = []
    items = iter(enumerate(jobs))  # (one next() at a time: the GIL)
    busy = threading.Lock()  # (held by the worker while it takes and does an item)

    def worker() -> None:
        while True:
            with busy:
                item = next(items, None)
                if item is None:
                    return
                SHARED[0] += 1
                try:
                    done[item[0]] = item[1]()
                except BaseException as exc:  # noqa: BLE001 (raised on the caller, below)
                    errors.append(exc)

    own_threads.submit(worker)
    try:
        for k, job in items:
            done[k] = job()
    finally:
        with busy:  # (the worker's item done; none left for it to take after this)
            for _ in items:
                pass
    if errors:
        raise errors[0]
    prints = done[: len(held)]
    return lambda: prints


def _pieces(copies: list) -> list:
    """The copies as `np.copyto` calls of at most CHUNK_BYTES each (a C-contiguous pair's flat
    slices; any other pair whole)."""
    jobs = []
    for dst, a in copies:
        if not (a.flags.c_contiguous and dst.flags.c_contiguous) or a.nbytes <= CHUNK_BYTES:
            jobs.append(partial(np.copyto, dst, a))
            continue
        flat, into = a.reshape(-1), dst.reshape(-1)
        step = max(1, CHUNK_BYTES // a.itemsize)
        jobs += [
            partial(np.copyto, into[i : i + step], flat[i : i + step])
            for i in range(0, flat.size, step)
        ]
    return jobs


# items of copy_and_digest the worker took (a structural test reads it)
SHARED = [0]
