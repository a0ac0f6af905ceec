"""Random-cell differential fuzzing on demand: thousands of tests/cell_fuzz.py cases (the CI
suite runs 200), each failing cell printed as source for tests/test_regressions_compiler.py.

Run: python tools/fuzz_cells.py [--cases 5000] [--seed 0] [--max-failures 20] [--masked]
[--concat] [--wide]
(--masked: each case masked -- cell.mask_zero() / nn.MaskZero(cell, 1) per cell, zero input
rows, lengths= with garbage in the padding: tests/cell_fuzz_mask.py; --concat: gate blocks
often written concat([x, s, ...]) @ W, API.md's MGU style: passes/split_concat.py; --wide:
widths and batch sizes 1, 3, 5, 7, 9, 17, 33, the remainders of a kernel's vector loops). The
backend is $TAPERNN_BACKEND's (TAPERNN_BACKEND=numba: the numba kernels).
Exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

# kernels compiled at their first call: with background compiles a program's first call runs
# NumPy and its second numba (1 ulp apart by design), and check_case compares the two calls
os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tapernn from this checkout, the fuzzer

from cell_fuzz import check_case, make_case, pruned_case
from cell_fuzz_mask import make_masked_case


def _smallest_failing(case):
    """The case pruned of code no state reads, if it still fails; else the case itself."""
    small = pruned_case(case)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            check_case(small)
    except Exception:  # noqa: BLE001
        return small
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases to run (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--max-failures", type=int, default=20, help="stop after this many failures (default 20)"
    )
    parser.add_argument(
        "--masked", action="store_true", help="mask every case (mask_zero / MaskZero, lengths=)"
    )
    parser.add_argument(
        "--concat", action="store_true", help="gate blocks often concat([x, s, ...]) @ W"
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="widths and batch sizes from cell_fuzz.WIDE (vector remainders: 1, 3, ... 33)",
    )
    args = parser.parse_args(argv)
    failures, start = [], time.perf_counter()
    make = make_masked_case if args.masked else make_case
    for k, seed in enumerate(range(args.seed, args.seed + args.cases)):
        case = make(seed, args.concat, args.wide)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                check_case(case)
        except Exception as e:  # noqa: BLE001 (every failure is reported, then the next case)
            failures.append(seed)
            print(f"FAIL seed {seed}: {type(e).__name__}: {str(e).strip()[:400]}")
            print("".join(traceback.format_exception(e)[-3:]).rstrip())
            print(_smallest_failing(case).describe(), "\n", flush=True)
            if len(failures) >= args.max_failures:
                break
        if (k + 1) % 100 == 0:
            print(
                f"{k + 1} cases, {len(failures)} failed, {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    print(f"{k + 1} cases from seed {args.seed}: {len(failures)} failed {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
