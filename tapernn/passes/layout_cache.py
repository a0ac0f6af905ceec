"""The layout rule's decisions on disk (issue 16: a new process does not time again the GEMMs an
earlier one timed): one JSON file, entries keyed by the machine, the BLAS, the GEMM shapes, dtype
and thread count; written whole or not at all; a corrupt, foreign or unwritable file is ignored."""

from __future__ import annotations

import functools
import json
import os
import platform
from pathlib import Path

from ..fileio import atomic_write

FORMAT = "tapernn-layout-rule/2"  # (/1: the GEMM-only rule's decisions: not read)
ENV = "TAPERNN_LAYOUT_CACHE"  # the file; "off" (or empty) keeps decisions in the process only
MAX_ENTRIES = 512  # the oldest are dropped beyond this
_PICKS = ("batch", "feature")


def cache_path() -> Path | None:
    """$TAPERNN_LAYOUT_CACHE, else $XDG_CACHE_HOME/tapernn/layout-rule.json (~/.cache when
    unset); None when the variable is "off", "0", "none" or empty."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tapernn" / "layout-rule.json"


@functools.cache
def machine() -> str:
    """The machine class a timing holds for: OS, architecture, CPU model and count, NumPy
    version and NumPy's BLAS (numpy_blas)."""
    import numpy as np

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        cpu = platform.processor()  # (runs `uname -p`: ~8 ms)
    parts = [platform.system(), platform.machine(), cpu, str(os.cpu_count()), np.__version__]
    return "|".join(parts + numpy_blas())


def numpy_blas() -> list[str]:
    """The BLAS NumPy's matmul calls, as its build names it (name, version, configuration):
    not every BLAS mapped into the process -- scipy's OpenBLAS, which numba's matmul loads,
    would make a process that has used numba key its decisions apart from one that has not.
    Without NumPy's build record (NumPy < 1.25): the BLAS libraries mapped into the process."""
    import numpy as np

    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # noqa: BLE001 (older NumPy: fall back to the mapped libraries)
        info = None
    if info is not None:
        return [str(info.get(k, "")) for k in ("name", "version", "openblas configuration")]
    try:
        with open("/proc/self/maps") as maps:
            paths = {ln.split()[-1] for ln in maps if "/" in ln}
        return sorted(p for p in paths if any(b in p.lower() for b in ("blas", "mkl", "blis")))
    except OSError:  # not Linux: the NumPy build stands for its BLAS
        return []


def key(gemms: tuple, dtype: str, threads: tuple) -> str:
    """The entry of one decision: this machine, the (shape, count) GEMMs, dtype, BLAS threads."""
    return json.dumps([machine(), [list(s) + [c] for s, c in gemms], dtype, list(threads)])


def _entries(path: Path) -> dict:
    """The file's entries; {} when it is missing, unreadable, corrupt or of another format."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def lookup(k: str) -> tuple[str, str] | None:
    """(pick, why) stored under `k`, or None."""
    path = cache_path()
    if path is None:
        return None
    entry = _entries(path).get(k)
    if (
        isinstance(entry, list)
        and len(entry) == 2
        and entry[0] in _PICKS
        and isinstance(entry[1], str)
    ):
        return entry[0], entry[1]
    return None


def store(k: str, pick: str, why: str) -> None:
    """Add a decision to the file (merged with what is there; best effort: a file that cannot
    be written leaves the decision in the process only)."""
    path = cache_path()
    if path is None:
        return
    entries = _entries(path)
    entries.pop(k, None)
    entries[k] = [pick, why]
    for old in list(entries)[: max(0, len(entries) - MAX_ENTRIES)]:
        del entries[old]
    text = json.dumps({"format": FORMAT, "entries": entries}, indent=0).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(text))
    except OSError:
        pass
