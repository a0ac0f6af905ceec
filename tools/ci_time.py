"""Read tools/ci_profile.py's records: where a cold-kernel-cache CI run spent its CPU, per file,
and (--groups) the numba kernels that differ only by their sizes.

    python tools/ci_time.py /tmp/prof                      # per file: tests, wall, CPU, compiles
    python tools/ci_time.py /tmp/prof --groups /tmp/cache   # + kernel modules alike but for sizes

--groups reads the kernel modules the run compiled from its kernel cache ($TAPERNN_KERNEL_CACHE
of the run, or its opt<level> subdirectory) and groups them by text with every number that
stands alone (not part of a name or a decimal: `buf12`, `float32`, `0.5` stay) replaced, each
imported kernel module named by its own text so reduced: the members of a group are one program
at other sizes (B, H, D, T*B), one compile apiece. A group whose members come from tests that
only chose other sizes is one compile once those tests share their sizes (tests/sizes.py); "if
shared" sums, per group, the compile CPU of every member but the dearest."""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import os
import re

_MODULE = re.compile(r"tapernn_k6_[0-9a-f]+")
_NUMBER = re.compile(r"(?<![\w.])\d+(?![\w.])")


def records(directory: str) -> list[dict]:
    """Every test's record of the run (one JSON line per test, one file per xdist worker)."""
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path) as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out


def per_file(recs: list[dict]) -> list[tuple]:
    """(file, tests, wall, CPU, compile CPU, compiles), by CPU, most first."""
    table = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0])
    for r in recs:
        row = table[r["test"].split("::")[0]]
        compiles = [e for e in r["events"] if e["kind"] == "compile"]
        row[0] += 1
        row[1] += r["wall"]
        row[2] += r["cpu"]
        row[3] += sum(e["cpu"] for e in compiles)
        row[4] += len(compiles)
    return sorted(((k, *v) for k, v in table.items()), key=lambda row: -row[3])


def shape_of(module: str, cache: str, memo: dict | None = None) -> str | None:
    """A kernel module's text without its sizes: numbers standing alone replaced, and each
    kernel module it imports named by that module's shape (a program at another batch imports
    another loop module of the same shape; one whose callee differs otherwise, e.g. by dtype, is
    another shape). None when the module is not in the cache."""
    memo = {} if memo is None else memo
    if module not in memo:
        memo[module] = None  # (no cycles in imports; this only stops one)
        path = os.path.join(cache, module + ".py")
        if os.path.exists(path):
            with open(path) as f:
                text = f.read()
            memo[module] = _NUMBER.sub("N", _MODULE.sub(lambda m: _called(m[0], cache, memo), text))
    return memo[module]


def _called(name: str, cache: str, memo: dict) -> str:
    shape = shape_of(name, cache, memo)
    return "K" if shape is None else "K" + hashlib.sha1(shape.encode()).hexdigest()[:12]


def size_groups(recs: list[dict], cache: str) -> list[tuple[float, float, list]]:
    """Groups of two or more compiled kernel modules alike but for sizes: (CPU saved if one
    compile served the group, CPU of the group, [(module, CPU, tests)]), most saved first."""
    where = collections.defaultdict(lambda: [0.0, set()])
    for r in recs:
        for e in r["events"]:
            if e["kind"] == "compile":
                entry = where[e["kernel"].split(".")[0]]
                entry[0] += e["cpu"]
                entry[1].add(r["test"])
    groups, memo = collections.defaultdict(list), {}
    for module, (cpu, tests) in where.items():
        shape = shape_of(module, cache, memo)
        if shape is not None:
            groups[shape].append((module, cpu, sorted(tests)))
    out = []
    for members in groups.values():
        if len(members) > 1:
            cpus = [cpu for _, cpu, _ in members]
            out.append((sum(cpus) - max(cpus), sum(cpus), members))
    return sorted(out, key=lambda g: -g[0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="$CI_PROFILE_DIR of the run")
    parser.add_argument("--groups", metavar="CACHE", help="the run's kernel cache directory")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    recs = records(args.profile)
    rows = per_file(recs)
    n, wall, cpu, comp, count = (sum(row[i] for row in rows) for i in range(1, 6))
    print(
        f"{n} tests, wall {wall:.0f} s, CPU {cpu:.0f} s, compile CPU {comp:.0f} s, {count} compiles"
    )
    for name, n, wall, cpu, comp, count in rows[: args.top]:
        print(
            f"{name:44} {n:4} tests  wall {wall:7.1f}  CPU {cpu:7.1f}  compile {comp:7.1f} ({count})"
        )
    if not args.groups:
        return
    groups = size_groups(recs, args.groups)
    saved = sum(g[0] for g in groups)
    print(f"\nif shared: -{saved:.0f} s of compile CPU in {len(groups)} groups")
    for saved, cpu, members in groups[: args.top]:
        print(f"-{saved:.1f} s of {cpu:.1f} s:")
        for module, c, tests in members:
            print(f"   {module[-8:]} {c:5.1f} s  {' | '.join(tests)[:150]}")


if __name__ == "__main__":
    main()
