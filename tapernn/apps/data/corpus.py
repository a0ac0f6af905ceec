"""The default training corpus: docstrings of the Python standard library, read from source with
`ast` (no module is imported, nothing is downloaded), in sorted file order, cached per Python."""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from ...errors import TapernnError
from ...fileio import atomic_write

DEFAULT_CAP = 1_500_000  # characters: enough for a char LM, small enough to collect in seconds
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


class CorpusError(TapernnError, ValueError):
    """The text cannot be read or is unusable; the message is one line for the user."""


def stdlib_docstrings(
    cap: int = DEFAULT_CAP,
    cache_dir: str | os.PathLike | None = None,
    on_collect: Callable[[], None] | None = None,
) -> str:
    """Docstrings of the standard library (modules, classes, functions), at most `cap` chars.

    Deterministic for a given Python installation. The result is cached under `cache_dir`
    (default: $XDG_CACHE_HOME/tapernn or ~/.cache/tapernn); an unwritable cache is skipped.
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    cache = _cache_path(stdlib, cap, cache_dir)
    try:
        return cache.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    if on_collect is not None:  # collecting takes seconds: let the caller say so
        on_collect()
    text = collect_docstrings(Path(stdlib), cap)
    _write_cache(cache, text)
    return text


def collect_docstrings(root: Path, cap: int) -> str:
    parts: list[str] = []
    size = 0
    for path in _source_files(root):
        for doc in _file_docstrings(path):
            parts.append(doc)
            size += len(doc) + 2
            if size >= cap:
                return "\n\n".join(parts)[:cap]
    return "\n\n".join(parts)


def _source_files(root: Path):
    # os.walk order depends on the file system; sorting makes the corpus reproducible
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def _file_docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError, RecursionError, UnicodeDecodeError):
        return []  # a few stdlib files are deliberately unparsable (lib2to3 data, bad encodings)
    nodes = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    docs = (ast.get_docstring(n, clean=True) for n in nodes)
    return [d for d in docs if d and d.strip()]


def _cache_path(stdlib: str, cap: int, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache_dir = os.path.join(base, "tapernn")
    tag = hashlib.sha1(f"{stdlib}|{cap}".encode()).hexdigest()[:10]
    version = f"{sys.version_info[0]}{sys.version_info[1]}"
    return Path(cache_dir) / f"stdlib-docstrings-py{version}-{tag}.txt"


def _write_cache(cache: Path, text: str) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # whole or not at all, and no temporary left by an interruption (Ctrl-C while writing)
        atomic_write(cache, lambda f: f.write(text.encode("utf-8")))
    except OSError:
        pass  # read-only home or cache: collecting again next time is only slower


def read_text_file(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file for training; raises CorpusError with a one-line reason."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise CorpusError(f"cannot read {os.fspath(path)!r}: it is a directory") from None
    except OSError as e:
        raise CorpusError(f"cannot read {os.fspath(path)!r}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{os.fspath(path)!r} is not UTF-8 text (bad byte at offset {e.start})"
        ) from None
    if not text.strip():
        raise CorpusError(f"{os.fspath(path)!r} is empty")
    return text
