"""Files written whole or not at all: write a temporary file in the target's directory, fsync
it, rename it over the target, fsync the directory. Also the crash hook the kill-during-save
tests use to die after the k-th durable operation (`crash_after`, or $TAPERNN_CRASH_AFTER).

A process killed mid-write (SIGKILL, power cut) leaves its temporary file behind. Its name says
whose it is, `.<target>.<pid>@<host>.<random>.tmp` (host: 8 hex digits of a hash of the host
name), and the next write of the same target from this host removes the temporaries of that
target whose process no longer exists: never this process's own (another thread may be writing
it), never a live process's, never another host's or one in the old unnamed form. A directory
is listed at most once a minute per process (RELIST_SECONDS): a temporary left after that
listing goes at a later write."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

CRASH_EXIT_CODE = 75  # what a process killed by the crash hook exits with
_crash = {"after": None, "count": 0}


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import (not thread-safe)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def crash_after(k: int | None) -> None:
    """Test hook: make this process die (os._exit, no cleanup, as a kill -9 would) right after
    its k-th durable file operation from now on (a file written, renamed, removed, or a
    directory synced); None turns it off. $TAPERNN_CRASH_AFTER=k does the same for a whole
    process (read when the first operation happens)."""
    _crash["after"], _crash["count"] = k, 0


def crash_point() -> None:
    """Called after each durable file operation; dies here when the hook says so."""
    after = _crash["after"]
    if after is None:
        env = os.environ.get("TAPERNN_CRASH_AFTER")
        if not env:
            return
        after = _crash["after"] = int(env)
    _crash["count"] += 1
    if _crash["count"] >= after:
        os._exit(CRASH_EXIT_CODE)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new entry in `directory` survive a power cut."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform that cannot open directories: nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)
    crash_point()


def write_file(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Create `path` (which must not be in use) by `write(f)`, then fsync it. For files in a
    directory nobody reads yet (a checkpoint generation being built)."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    crash_point()


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


_HOST = _host_tag()
_TEMP_TAIL = re.compile(r"(\d+)@([0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (PermissionError: another user's process; anything else: assume alive)
        return True
    return True


_LISTED: dict[str, tuple[float, list[str]]] = {}  # directory -> (when, its temporaries' names)
# a directory is listed at most this often (the kernel cache holds 10^4 files)
RELIST_SECONDS = 60.0


def _temp_names(directory: Path) -> list[str]:
    """The names of the hidden .tmp files in `directory`, listed at most every RELIST_SECONDS per
    process (listing a directory of 10^4 kernel files took 43 ms)."""
    key, now = str(directory), time.monotonic()
    found = _LISTED.get(key)
    if found is None or now - found[0] > RELIST_SECONDS:
        try:
            names = [n for n in os.listdir(directory) if n[:1] == "." and n.endswith(".tmp")]
        except OSError:
            names = []
        found = _LISTED[key] = (now, names)
    return found[1]


def remove_stale_temps(target: Path) -> list[str]:
    """Remove the temporary files atomic_write left next to `target` in processes on this host
    that have died (see the module doc); the names removed."""
    head = f".{target.name}."
    names = _temp_names(target.parent)
    removed = []
    for name in list(names):
        if not name.startswith(head):
            continue
        m = _TEMP_TAIL.fullmatch(name, len(head))
        if m is None or m.group(2) != _HOST:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            os.unlink(target.parent / name)
        except FileNotFoundError:  # (removed by another writer meanwhile)
            pass
        except OSError:  # (not ours to remove)
            continue
        try:
            names.remove(name)
        except ValueError:  # (another thread's write removed it from the listing first)
            pass
        removed.append(name)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Replace `path` by what `write(f)` writes, whole or not at all: an interruption at any
    point leaves either the previous file or the new one, never a mix or a truncated file. A
    symbolic link is written through, as open() would (Torch7's and PyTorch's save): its target
    is replaced and the link kept, not the link replaced by a file."""
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.{os.getpid()}@{_HOST}.", suffix=".tmp"
    )
    remove_stale_temps(target)  # (after mkstemp: a directory that cannot be written raised)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        crash_point()
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; ours need not be
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    crash_point()
    fsync_dir(target.parent)
