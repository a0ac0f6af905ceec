"""Lines per part of tapernn (the size budget of ARCHITECTURE.md): the kernel -- IR, tracing, ops,
autodiff, pass driver, plain planner, lowering, executor -- against its 2,000-line target, the
optimisation tier (passes, region planner) and the rest. Counts non-blank, non-comment lines.

Run: python tools/loc.py [checkout]   (default: this checkout)
"""

from __future__ import annotations

import sys
from pathlib import Path

KERNEL_TARGET = 2000

# (tier, part, files relative to tapernn/); a file is counted in the first part naming it
PARTS = [
    ("kernel", "IR", ["graph.py", "ops/registry.py", "ops/indexing.py", "ops/__init__.py"]),
    ("kernel", "errors", ["errors.py"]),
    ("kernel", "tracing", ["tracing.py", "functional.py"]),
    (
        "kernel",
        "ops",
        ["ops/elementwise.py", "ops/reduce.py", "ops/shape.py", "ops/linalg.py", "ops/nn.py"],
    ),
    ("kernel", "autodiff", ["autodiff.py"]),
    ("kernel", "driver", ["passes/driver.py", "passes/dce.py"]),
    ("kernel", "plain planner", ["memory.py"]),
    ("kernel", "lowering", ["codegen.py"]),
    ("kernel", "executor", ["executor.py"]),
    # switched off by compile(passes=[], options=PlanOptions(regions=False, inline_sigmoid=False));
    # tests/test_kernel_alone.py checks the kernel then calls none of it
    ("optimisation", "passes", ["passes/*.py"]),  # DEFAULT, rewrite helpers, the rewrites
    ("optimisation", "CSE keys", ["keys.py"]),  # hashable attribute keys the passes compare
    ("optimisation", "tuning", ["tuning.py"]),  # GC pause while compiling, fast errstate
    ("optimisation", "plan options", ["plan_options.py"]),  # the tier's switches, thresholds
    ("optimisation", "region planner", ["regions.py"]),
    ("optimisation", "shared arena", ["arena.py"]),  # a training pair's programs share buffers
    ("optimisation", "fused lowering", ["ops/fused.py", "fused_lowering.py", "backends/*.py"]),
    ("loops", "scan", ["scan*.py"]),  # tn.scan: the loop node, its lowering and VJP
    ("rest", "oracle, gradcheck", ["interpret.py", "testing.py"]),
    ("rest", "argument checks", ["validation.py"]),
    ("rest", "views", ["views.py"]),  # graph text, networkx form, the compile report's table
    ("rest", "accounting", ["accounting.py"]),  # bytes and kernels of a plan, for the report
    ("rest", "library", ["library.py"]),  # functions composed of kernel ops (mean, stack, split)
    ("rest", "nn", ["nn/*.py"]),
    ("rest", "export", ["export/*.py"]),
    ("rest", "applications", ["apps/**/*.py", "__main__.py"]),
    ("rest", "package, helpers", ["*.py"]),  # __init__, optim, blas, fileio, random, serialization
]


def code_lines(path: Path) -> int:
    return sum(
        1
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    )


def count(root: Path) -> list[tuple[str, str, int, list[str]]]:
    pkg = root / "tapernn"
    seen: set[Path] = set()
    rows = []
    for tier, part, patterns in PARTS:
        files = [f for p in patterns for f in sorted(pkg.glob(p)) if f.exists() and f not in seen]
        seen.update(files)
        rows.append(
            (
                tier,
                part,
                sum(code_lines(f) for f in files),
                [str(f.relative_to(pkg)) for f in files],
            )
        )
    return rows


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[1])
    rows = count(root)
    print(f"{'tier':<14}{'part':<16}{'lines':>7}  files")
    totals: dict[str, int] = {}
    for tier, part, n, files in rows:
        totals[tier] = totals.get(tier, 0) + n
        shown = ", ".join(files) if len(files) <= 4 else f"{len(files)} files"
        print(f"{tier:<14}{part:<16}{n:>7}  {shown}")
    print()
    for tier, n in totals.items():
        note = f"  (target <= {KERNEL_TARGET})" if tier == "kernel" else ""
        print(f"{tier:<30}{n:>7}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
