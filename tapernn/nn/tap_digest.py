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

import zlib

import numpy as np


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
