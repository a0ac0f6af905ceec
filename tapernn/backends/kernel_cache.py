"""The numba kernel cache on disk ($TAPERNN_KERNEL_CACHE, else ~/.cache/tapernn/numba-kernels):
what it holds (`cache_info`), emptying it (`clear_cache`), bounding it (`prune_cache`), and the
one place its modules are written and imported (`import_written`). Nothing here imports numba.

Layout: `<root>/<name>.py` (a kernel's text, named by its digest: tapernn_k*, tapernn_packed_*,
tapernn_vm_*) with numba's index (.nbi) and data (.nbc) files in `<root>/__pycache__` (with
$NUMBA_CACHE_DIR set: in numba's folder for `<root>` there, `numba_folders`); kernels
compiled below numba's -O3 the same under `<root>/opt<level>` (numba_opt.py). A *module* here is
one name: its .py and every numba file of that name. None is needed: a module that is missing is
written and compiled again.

Removal is safe with concurrent processes. A module used in the last IN_USE seconds is left
(a process may be importing it: `import_written` marks the .py before it imports it). Else its
files go in this order: numba's index, its data, then the .py. A process loading the module
meanwhile finds the index gone (numba compiles: it reads a data file only through its index), or
the data gone (numba's load catches the OSError and compiles), or the .py gone (numba's cache
needs the .py only while the module is imported; `import_written` then writes it again and
imports that; numba keys its cache by the file's content, not its times). Files of other names
in the directory are never touched; temporary files only when an hour old (a writer may still
own a younger one).

Least recently used: `import_written` sets the .py's access time at each process's first load
(its modification time is kept), so a module's last use is the newest time of its files.

No automatic bound (BENCHMARKS.md hqa16): a prune costs a scan of the whole directory (measured
there), a bound removes kernels a user's next run may need (each 0.3-3 s to compile again), and
a scan at import would run in every process; `tapernn cache --prune SIZE` is one command."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import sys
import time
from pathlib import Path
from types import ModuleType

from ..errors import ArgumentError, TapernnError
from ..fileio import atomic_write

# a module's name: what numba_backend._module_name, packed._kernel_module, vecmath write
_NAME = re.compile(r"\.?(tapernn_[a-z0-9]+_[0-9a-f]{20})\.")
_LEVEL_DIR = re.compile(r"opt[0-9]")
TEMP_AGE = 3600.0  # seconds: a younger temporary file may still be written
IN_USE = 10.0  # seconds: a module used more recently may be loading (import_written) now
_TRIES = 5  # import_written: writes and imports of a module removed meanwhile


class CacheError(TapernnError, OSError):
    """A kernel cache file could not be removed (permissions, a read-only file system)."""


def cache_root() -> Path:
    """$TAPERNN_KERNEL_CACHE, else ~/.cache/tapernn/numba-kernels (numba_backend.cache_dir is
    this, or its opt<level> subdirectory below numba's -O3)."""
    env = os.environ.get("TAPERNN_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tapernn" / "numba-kernels"


@dataclasses.dataclass(frozen=True)
class CacheLevel:
    """One directory of the cache: `name` "O3" (the root: numba's default level) or "opt0"...;
    `modules` kernel modules in it, `bytes` their files' size."""

    name: str
    path: Path
    modules: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class CacheInfo:
    """What `cache_info` found: the root, its levels, and the oldest / newest last use of a
    module (seconds since the epoch; None when empty)."""

    path: Path
    levels: tuple[CacheLevel, ...]
    oldest_use: float | None
    newest_use: float | None

    @property
    def modules(self) -> int:
        return sum(level.modules for level in self.levels)

    @property
    def bytes(self) -> int:
        return sum(level.bytes for level in self.levels)


@dataclasses.dataclass(frozen=True)
class Removed:
    """What `clear_cache` / `prune_cache` removed: whole modules and their files' bytes;
    `in_use`: modules it would have removed but left, used in the last IN_USE seconds."""

    modules: int
    bytes: int
    in_use: int = 0


@dataclasses.dataclass
class _Module:
    level: str
    files: list[tuple[Path, int, float]]  # (path, size, modification time)
    used: float = 0.0

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.files)


def _levels(root: Path) -> list[tuple[str, Path]]:
    levels = [("O3", root)]
    try:
        subdirs = sorted(p.name for p in root.iterdir() if _LEVEL_DIR.fullmatch(p.name))
    except FileNotFoundError:
        return levels
    except OSError as e:  # (a file, or a folder that cannot be read)
        raise CacheError(
            f"kernel cache {str(root)!r} ($TAPERNN_KERNEL_CACHE): {e.strerror}; expected a folder"
        ) from None
    return levels + [(name, root / name) for name in subdirs]


def _scan(root: Path) -> list[_Module]:
    """Every module of the cache, with its files and last use."""
    modules: dict[tuple[str, str], _Module] = {}
    for level, directory in _levels(root):
        for folder in (directory, *numba_folders(directory)):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                m = _NAME.match(entry.name)
                if m is None:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # (removed meanwhile)
                    continue
                module = modules.setdefault((level, m.group(1)), _Module(level, []))
                module.files.append((Path(entry.path), st.st_size, st.st_mtime))
                module.used = max(module.used, st.st_atime, st.st_mtime)
    return list(modules.values())


def cache_info(path: str | os.PathLike | None = None) -> CacheInfo:
    """The cache at `path` (default `cache_root()`): modules and bytes per level."""
    root = Path(path) if path is not None else cache_root()
    found = _scan(root)
    levels = []
    for name, directory in _levels(root):
        mine = [m for m in found if m.level == name]
        levels.append(CacheLevel(name, directory, len(mine), sum(m.size for m in mine)))
    uses = [m.used for m in found]
    return CacheInfo(root, tuple(levels), min(uses, default=None), max(uses, default=None))


def numba_folders(directory: Path) -> tuple[Path, ...]:
    """Where numba keeps the index and data files of the modules in `directory`: its
    `__pycache__`, and with $NUMBA_CACHE_DIR set the folder numba names there for `directory`
    (numba.core.caching's UserProvidedCacheLocator: "<folder name>_<sha1 of its absolute
    path>"), which numba then uses instead."""
    folders = (directory / "__pycache__",)
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        path = os.path.abspath(directory)
        digest = hashlib.sha1(path.encode()).hexdigest()
        folders += (Path(user) / f"{os.path.basename(path)}_{digest}",)
    return folders


def _order(item: tuple[Path, int, float]) -> int:
    """numba's index files first, then its data, the .py last (see the module doc)."""
    name = item[0].name
    return 0 if ".nbi" in name else 1 if ".nbc" in name else 3 if name.endswith(".py") else 2


def _temporary(name: str) -> bool:
    """atomic_write's (".<name>.<pid>@<host>.<random>.tmp") or numba's ("<file>.tmp.<uuid>")."""
    return name.startswith(".") or ".tmp" in name


def _remove(modules: list[_Module]) -> Removed:
    count = size = in_use = 0
    now = time.time()
    for module in modules:
        if _used(module) > now - IN_USE:
            in_use += 1
            continue
        removed = 0
        for path, nbytes, mtime in sorted(module.files, key=_order):
            if _temporary(path.name) and mtime > now - TEMP_AGE:
                continue
            try:
                path.unlink()
            except FileNotFoundError:  # (another process removed it)
                continue
            except OSError as e:
                raise CacheError(f"kernel cache: cannot remove {path}: {e.strerror}") from e
            removed += nbytes
        count += removed > 0
        size += removed
    return Removed(count, size, in_use)


def _used(module: _Module) -> float:
    """The module's last use, its .py looked at again now (a process may have begun to load it
    since the scan: it marks the .py first, and the window to its import is this stat's)."""
    used = module.used
    for path, _, _ in module.files:
        if path.suffix == ".py":
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            used = max(used, st.st_atime, st.st_mtime)
    return used


def clear_cache(path: str | os.PathLike | None = None) -> Removed:
    """Remove every kernel module of the cache at `path` (default `cache_root()`), every level.
    Kernels already loaded in running processes keep working; the next process compiles."""
    return _remove(_scan(Path(path) if path is not None else cache_root()))


def prune_cache(
    max_bytes: int | None = None,
    older_than_days: float | None = None,
    path: str | os.PathLike | None = None,
) -> Removed:
    """Remove the least recently used modules: those last used more than `older_than_days` ago,
    then the oldest until the cache holds at most `max_bytes` (all levels together)."""
    if max_bytes is None and older_than_days is None:
        raise ArgumentError("prune_cache: expected max_bytes= or older_than_days=, got neither")
    for what, value in (("max_bytes", max_bytes), ("older_than_days", older_than_days)):
        if value is not None and (isinstance(value, bool) or not value >= 0):
            raise ArgumentError(f"prune_cache: expected {what} >= 0, got {value!r}")
    found = sorted(_scan(Path(path) if path is not None else cache_root()), key=lambda m: m.used)
    chosen = []
    if older_than_days is not None:
        before = time.time() - older_than_days * 86400.0
        while found and found[0].used < before:
            chosen.append(found.pop(0))
    if max_bytes is not None:
        total = sum(m.size for m in found)
        while found and total > max_bytes:
            total -= found[0].size
            chosen.append(found.pop(0))
    return _remove(chosen)


def import_written(directory: Path, name: str, text: bytes) -> ModuleType:
    """Module `name` from `directory/name.py`, written there first (whole: atomic_write) unless
    it holds `text` already, and marked used. A file removed meanwhile by another process's
    clear or prune (or a whole directory) is written again and imported again."""
    path = directory / f"{name}.py"
    for attempt in range(_TRIES):
        try:
            there = path.read_bytes() == text
        except FileNotFoundError:
            there = False
        if not there:
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(text))
        _mark_used(path)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            sys.modules.pop(name, None)  # (a half-run module must not serve later imports)
            if attempt == _TRIES - 1 or path.exists():
                raise
            continue
        return module
    raise AssertionError("unreachable")


def _mark_used(path: Path) -> None:
    """Access time now, modification time kept (numba's stamp is the content: either is free)."""
    try:
        st = os.stat(path)
        os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
    except OSError:  # (removed meanwhile, or a read-only cache: no mark, nothing wrong)
        pass
