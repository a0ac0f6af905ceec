"""numba's first-use setup (its CPU target's registries), done once before tapernn loads or
compiles a kernel, without the scipy.linalg import numba makes there only to check for BLAS
(0.5 s of its ~1 s; tapernn's kernels never call BLAS): the check is deferred to first need,
the deferral itself installed by the first compile (`deferred_at_first_compile`).
Nor does a load from numba's disk cache refresh numba's CPU target (`loads_unrefreshed`): the
refresh imports and installs every typing and lowering registry numba has (typed dicts,
unicode, random, polynomials, ...), 0.3-0.45 s of a warm first call's CPU, which only a compile
reads -- and numba's compiler refreshes the target itself before each compile.
Below numba's default -O3 (NUMBA_OPT=0/1/2: e.g. `NUMBA_OPT=0 pytest`, issue 19) it also makes
kernels cacheable and keys numba's cache by the level (numba_opt.py). And numba's cache saves
take a lock on the cache folder (`locked_saves`: compile_child.py's processes save at once)."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import sys
import threading
import warnings

from .numba_opt import keyed

# the numba releases (lowest, highest) whose setup this was read and tested against
# (tests/test_numba_setup.py; 0.68.1): the BLAS check is numba.np.arraymath._HAVE_BLAS =
# _check_blas() at import, whose only reader is _get_inner_prod (np.convolve/np.correlate); on
# any other release numba sets up as usual (a newer one: check, then widen the range)
CHECKED_VERSIONS = ((0, 68), (0, 68))
_done = False
_lock = threading.Lock()


class DeferredBlasCheck:
    """Stands for numba's `_HAVE_BLAS`: runs numba's own check (`_check_blas`, which imports
    scipy.linalg) the first time its truth is asked, and keeps the answer."""

    def __init__(self, check) -> None:
        self._check, self._value = check, None

    def __bool__(self) -> bool:
        if self._value is None:
            self._value = bool(self._check())
        return self._value

    def __repr__(self) -> str:
        return f"DeferredBlasCheck({'unchecked' if self._value is None else self._value})"


def _version(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def deferrable() -> bool:
    """Whether the BLAS check can be deferred: a checked numba release whose numba.np.arraymath
    is not imported yet (once it is, the check has run and there is nothing to save)."""
    import numba

    low, high = CHECKED_VERSIONS
    return low <= _version(numba.__version__) <= high and "numba.np.arraymath" not in sys.modules


def setup() -> bool:
    """numba's CPU target set up (once per process); True when the BLAS check was deferred."""
    global _done
    with _lock:
        if _done:
            return False
        _done = True
        quiet_kernel_hints()
        keyed()  # (below -O3: cacheable kernels, cache keyed by the level; else nothing)
        locked_saves()  # (numba's cache saves under a folder lock: compile_child.py)
        from numba.core.compiler_lock import global_compiler_lock
        from numba.core.registry import cpu_target

        # (the target context made before the compiler lock is taken, as numba's own first
        # @njit does -- its cached property's lock, then the compiler lock: taken the other
        # way round here, a first @njit on another thread meanwhile deadlocked both)
        cpu_target.target_context  # noqa: B018
        with global_compiler_lock:  # no numba compile sees the stand-in check half-installed
            refreshed_by_compiles = loads_unrefreshed()
            if not deferrable():
                if not refreshed_by_compiles:
                    cpu_target.target_context.refresh()
                return False
            if refreshed_by_compiles:  # (the first compile's refresh defers the check)
                deferred_at_first_compile()
                return True
            blas_check_deferred()
            cpu_target.target_context.refresh()
            return True


# the module numba's warnings name for a line of a tapernn kernel: warn_explicit's module is the
# kernel file's path without ".py" (kernel_cache writes tapernn_<kind>_<20 hex digits>.py)
KERNEL_MODULE = r".*tapernn_[a-z0-9]+_[0-9a-f]{20}$"


def quiet_kernel_hints() -> None:
    """Drop numba's performance hints about lines of tapernn's generated kernels (e.g. "np.vdot()
    is faster on contiguous arrays" where a loop kernel multiplies a step's slice of a stacked
    input: numba copies it, and a user can do nothing about that line). Only those: a user's own
    numba functions keep theirs. A filter for the process (not catch_warnings around each
    compile, which swaps every thread's filters while a background thread compiles)."""
    from numba.core.errors import NumbaPerformanceWarning

    warnings.filterwarnings("ignore", category=NumbaPerformanceWarning, module=KERNEL_MODULE)


def blas_check_deferred() -> None:
    """Import numba.np.arraymath (its import runs numba's BLAS check) with the check replaced by
    a DeferredBlasCheck; under numba's compiler lock, `deferrable()` just checked."""
    from numba.np import linalg

    ensure_blas = linalg.ensure_blas

    def later() -> None:
        raise ImportError("tapernn: numba's BLAS check deferred to first need")

    linalg.ensure_blas = later
    try:
        from numba.np import arraymath  # runs _HAVE_BLAS = _check_blas(): False
    finally:
        linalg.ensure_blas = ensure_blas
    arraymath.ensure_blas = ensure_blas
    arraymath._HAVE_BLAS = DeferredBlasCheck(arraymath._check_blas)


def deferred_at_first_compile() -> None:
    """The BLAS check deferred by the first load of numba's CPU registries (a compile's target
    refresh: CPUContext.load_additional_registries imports numba.np.arraymath), not now: a
    process that only loads cached kernels (`loads_unrefreshed`) then never imports
    numba.np.linalg / arraymath / arrayobj and what they import (~0.07 s of a warm first
    call's CPU, BENCHMARKS.md "hwarm2"). Once per process."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.cpu import CPUContext

    numbas = CPUContext.load_additional_registries
    if getattr(numbas, "_tapernn", False):
        return

    def load_additional_registries(self):
        with global_compiler_lock:  # (a compile holds it already: numba's lock is reentrant)
            if deferrable():
                blas_check_deferred()
        return numbas(self)

    load_additional_registries._tapernn = True
    CPUContext.load_additional_registries = load_additional_registries


def loads_unrefreshed() -> bool:
    """numba's disk-cache loads (Cache.load_overload) for the CPU target without the target
    refresh numba does first: a loaded overload is machine code, its types unpickled, and
    needs only numba's runtime (NRT: its symbols and atomics, `rtsys.initialize`, which the
    load still does). Every compile refreshes the target itself (CompilerBase.__init__, numba
    0.68), so the registries are there before anything is typed or lowered. True once
    installed (a checked numba release: CHECKED_VERSIONS); else numba's loads as they were."""
    import numba
    from numba.core import caching
    from numba.core.cpu import CPUContext
    from numba.core.runtime import rtsys

    cls = caching.Cache
    if getattr(cls.load_overload, "_tapernn", False):
        return True
    low, high = CHECKED_VERSIONS
    parts = ("_guard_against_spurious_io_errors", "_load_overload")
    if not low <= _version(numba.__version__) <= high or not all(hasattr(cls, p) for p in parts):
        return False
    numbas = cls.load_overload

    def load_overload(self, sig, target_context):
        if type(target_context) is not CPUContext:  # (another target: numba's own load)
            return numbas(self, sig, target_context)
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)
        return None  # (an I/O error the guard swallowed: a miss, as numba's own load)

    load_overload._tapernn = True
    cls.load_overload = load_overload
    return True


LOCKED = [False]  # numba's cache saves locked in this process (locked_saves)


@contextlib.contextmanager
def _folder_lock(folder: str):
    """An exclusive lock on `folder` (flock on its descriptor: released when the holder dies);
    none where the file system has no such lock (the save then as numba's own)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def locked_saves() -> None:
    """numba's cache saves (IndexDataCacheFile.save) under a lock on the cache folder, the data
    file written before the index names it (compile_child.py's docstring). Once per process."""
    from numba.core import caching

    cls = caching.IndexDataCacheFile
    parts = ("_load_index", "_save_index", "_save_data", "_data_name")
    if getattr(cls.save, "_tapernn", False) or not all(hasattr(cls, p) for p in parts):
        return  # (another numba's cache file: its own save, and no children)

    def save(self, key, data):
        with _folder_lock(self._cache_path):
            overloads = self._load_index()
            data_name = overloads.get(key)
            if data_name is None:
                used = set(overloads.values())
                names = (self._data_name(i) for i in itertools.count(1))
                data_name = next(n for n in names if n not in used)
            self._save_data(data_name, data)
            overloads[key] = data_name
            self._save_index(overloads)

    save._tapernn = True
    cls.save = save
    LOCKED[0] = True
