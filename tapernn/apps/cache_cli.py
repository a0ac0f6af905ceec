"""`tapernn cache`: where the numba kernel cache is, its size per optimisation level, and
clearing or pruning it (tapernn.backends.kernel_cache)."""

from __future__ import annotations

import argparse
import os
import re
import time

from ..errors import ArgumentError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of "500M", "2G", "1.5GiB", "0" (K, M, G, T: powers of 1024)."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 500M or 2G (K, M, G, T: powers of 1024), got {text!r}"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clear", action="store_true", help="remove every kernel module (every level)"
    )
    parser.add_argument(
        "--prune",
        metavar="SIZE",
        type=parse_size,
        help="remove the least recently used modules until the cache holds at most SIZE "
        "(e.g. 500M, 2G)",
    )
    parser.add_argument(
        "--older-than",
        metavar="DAYS",
        type=_days,
        help="remove the modules not used for more than DAYS days",
    )


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _ago(when: float | None) -> str:
    if when is None:
        return "never"
    s = max(time.time() - when, 0.0)
    for size, unit in ((86400, "days"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{s / size:.1f} {unit} ago"
    return f"{s:.0f} s ago"


def run(args: argparse.Namespace) -> int:
    from ..backends import kernel_cache, numba_missing
    from ..backends.kernel_cache import IN_USE

    if args.clear and (args.prune is not None or args.older_than is not None):
        raise ArgumentError("--clear removes everything: give it without --prune/--older-than")
    if args.clear:
        removed = kernel_cache.clear_cache()
    elif args.prune is not None or args.older_than is not None:
        removed = kernel_cache.prune_cache(max_bytes=args.prune, older_than_days=args.older_than)
    else:
        removed = None
    if removed is not None:
        kept = removed.in_use
        print(
            f"removed {removed.modules} module{'' if removed.modules == 1 else 's'}, "
            f"{human(removed.bytes)}"
            + (f"; kept {kept} in use (loaded in the last {IN_USE:.0f} s)" if kept else "")
        )
    info = kernel_cache.cache_info()
    absent = "" if info.path.is_dir() else ", not created yet"
    chosen = os.environ.get("TAPERNN_KERNEL_CACHE")  # (cache_root's rule)
    whose = "from $TAPERNN_KERNEL_CACHE" if chosen else "set $TAPERNN_KERNEL_CACHE to move it"
    print(f"kernel cache: {info.path} ({whose}{absent})")
    for level in info.levels:
        if level.name == "O3" or level.modules:
            where = "" if level.name == "O3" else f"  ({level.path.name}/: NUMBA_OPT below 3)"
            print(f"  {level.name:<5} {level.modules:>7} modules  {human(level.bytes):>10}{where}")
    print(f"  total {info.modules:>7} modules  {human(info.bytes):>10}")
    if info.modules:
        print(f"  last used {_ago(info.newest_use)}; least recently used {_ago(info.oldest_use)}")
    why = numba_missing()
    if why:
        print(f"note: {why}: nothing compiles or loads kernels here, the cache only holds files")
    return 0
