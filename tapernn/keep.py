"""A program's large per-call arrays made again in the same memory when the previous call's
array is no longer referenced (issue 19, BENCHMARKS.md "hbig3").

Why: a rolled loop's slab (saved activations, returned outputs) is allocated on every call
(codegen: results handed to callers are never overwritten by the next call). At (64, 100, 1024)
f32 it is 151 MiB: glibc maps an allocation over 32 MiB afresh (mmap) and unmaps it when freed,
so each training step's forward touched 151 MiB of new pages -- 332 huge-page faults (NumPy
madvises its large arrays) and 18-540 ms of system time a step (median 27 ms in one A/B run:
it depends on how fragmented the kernel's free memory is), or 38,657 small-page faults (~85 ms)
without the madvise; the step is ~2 s. In a steady training loop the previous step's
slab is released (its record dropped) just before the next forward makes its own: the new slab
can be the old one.

`Keeper` is one allocation site's np.empty: it keeps the array it made last and returns it
again when nothing else references it (`sys.getrefcount`: every view, `.base` chain, memoryview,
torch.from_numpy tensor or list entry holding it counts), else it makes a new one and keeps that
instead (the caller's array is never written). The contents are undefined either way, as
np.empty's; the program writes every element it reads (it did with np.empty).

Memory: the report already counts a program's per-call values in `resident_bytes` (arena.py);
the kept array is one of them, held between calls even when the caller has dropped the results
-- never two of them, and the steady loop's peak is unchanged (the old array was freed right
before the new one was made). The Keepers of one module's programs form a group (`join`, by
arena.Arena): a call drops the other programs' kept arrays nothing else holds, so switching
between training and evaluation holds no slab np.empty would have freed. Arrays under KEEP_MIN_BYTES are left to
malloc (its free lists reuse them without faults)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable

import numpy as np

# per-call arrays from this size on are kept (tests set it to 0, or above every array for "off");
# glibc serves blocks from 128 KiB up to a threshold that grows to 32 MiB by mmap; NumPy madvises
# huge pages from 4 MiB
KEEP_MIN_BYTES = 1 << 20
# a reuse's test and its hand-out are one step for every Keeper: between a free() and the return,
# another thread's call of the same program would take the same array
_LOCK = threading.Lock()


class Keeper:
    """np.empty(shape, dtype) for one allocation site: the array made last time when nothing
    else holds it any more, else a new one (kept in its place)."""

    __slots__ = ("array", "group", "made", "reused")

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.made = 0  # arrays made (tests: a reuse, or a new array while the caller held one)
        self.reused = 0
        # the Keepers of the module's other programs (`join`): their arrays nothing else holds
        # are dropped when this one is called -- np.empty would have had them freed by then
        self.group: list[Keeper] = []

    def __call__(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        with _LOCK:  # (two threads calling one program: the second sees the first's reference)
            for k in self.group:
                if k is not self and k.free():
                    k.array = None
            if self.free() and self.array.shape == shape and self.array.dtype == dtype:
                self.reused += 1
                return self.array
            self.array = None  # (the caller's array is theirs alone now)
            a = self.array = np.empty(shape, dtype)
            self.made += 1
            return a

    def refs(self) -> int:
        """sys.getrefcount of the kept array, read the same way wherever it is compared with
        _ALONE (the count when nothing but this Keeper holds it, measured at import: CPython
        versions count the call's own references differently)."""
        return sys.getrefcount(self.array)

    def free(self) -> bool:
        """Whether an array is kept and nothing else references it."""
        return self.array is not None and KEEPING and self.refs() == _ALONE

    @property
    def nbytes(self) -> int:
        return 0 if self.array is None else self.array.nbytes

    def release(self) -> None:
        """Drop the kept array (the next call makes a new one)."""
        self.array = None

    def __deepcopy__(self, memo: dict) -> Keeper:
        return Keeper()  # (a copy's program keeps its own arrays)

    def __reduce__(self) -> tuple:
        return Keeper, ()


def join(group: list[Keeper], keepers: list[Keeper]) -> None:
    """Add `keepers` (a program's) to `group` (the list every Keeper of a module's programs
    shares: arena.Arena.keepers): a call of one drops the others' free arrays, so a module
    holds no more between its calls than the last program it ran kept (an evaluation program's
    slab is not held through training, nor training's through evaluation)."""
    for k in keepers:
        if k not in group:
            group.append(k)
        k.group = group


def drop_free(group: list[Keeper], but: Iterable[Keeper] = ()) -> None:
    """Drop the arrays of `group`'s Keepers (not those in `but`) that nothing else holds: a
    module's general call path (nn/runtime.py) before it runs a program, so a switch between
    programs (training and evaluation, another input shape) holds no array of the other
    program's that np.empty would have had freed by then."""
    but = set(map(id, but))
    with _LOCK:
        for k in group:
            if id(k) not in but and k.free():
                k.array = None


def allocator(nbytes: int) -> Keeper | None:
    """A Keeper for a per-call array of `nbytes`, or None (np.empty each call)."""
    return Keeper() if nbytes >= KEEP_MIN_BYTES else None


def _calibrate() -> tuple[int, bool]:
    """(refs() of an array only a Keeper holds, whether one more reference raises it): the
    reuse test relies on both; where the second fails (a Python whose getrefcount does not
    see a caller's reference this way), nothing is kept (KEEPING False: np.empty each call)."""
    k = Keeper()
    k.array = np.empty(1)
    alone = k.refs()
    held = k.array  # noqa: F841 (a caller's reference)
    return alone, k.refs() == alone + 1


_ALONE, KEEPING = _calibrate()
