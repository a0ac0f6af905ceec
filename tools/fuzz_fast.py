"""Differential fuzzing of the fast paths on demand (tests/fast_fuzz.py): large shapes on the
numba backend -- packed step GEMMs, the batch split, owned threads, step loops, bias in the
owned GEMM halves, keep.py reuse, lent .grad panels -- built-in cells against their NumPy
equations, random custom cells against the reference interpreter; each failing case printed
(its description and the cell source) for a regression test.

Run: python tools/fuzz_fast.py [--cases 1000] [--seed 0] [--max-failures 10] [--calls 4] [--masked]
[--masked-lengths] [--sizes suite|wide|small]
(--masked: only the seeds whose case is masked -- cell.mask_zero() / nn.MaskZero -- the others
skipped unrun, not counted; --masked-lengths: the cases with lengths= may be masked too, and
only those masked with lengths= run.)
A case that fails also with every fast path off (numba backend: fast_fuzz.SLOW) is reported as
ill-conditioned at the oracle's tolerance, not as a failure. Exit status 1 if any case failed; 2 if numba or AVX-512 is missing (nothing fast to fuzz).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

# kernels from the first call unless asked otherwise: the split runs from the second call
os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tapernn from this checkout, the fuzzer

from fast_fuzz import make_fast_case, run_case, slow_paths_fail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000, help="cases to run (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--calls", type=int, default=5, help="at most this many calls a case (>= 3)"
    )
    parser.add_argument(
        "--max-failures", type=int, default=10, help="stop after this many failures (default 10)"
    )
    parser.add_argument(
        "--masked", action="store_true", help="only cases with mask_zero() / nn.MaskZero"
    )
    parser.add_argument(
        "--masked-lengths",
        action="store_true",
        help="mask the cases with lengths= too, and run only those (masking and lengths= together)",
    )
    parser.add_argument(
        "--sizes",
        default="suite",
        choices=["suite", "wide", "small"],
        help="fast_fuzz.SIZES: wide: odd H and B, B = 1, H = 513; small: H 1 ... 33, B 1 ... 9",
    )
    args = parser.parse_args(argv)
    from tapernn.backends import numba_available
    from tapernn.backends.packed import available

    if not numba_available() or not available():
        print("numba or AVX-512 missing: the fast paths do not engage here", file=sys.stderr)
        return 2
    failures, conditioned, start, totals = [], [], time.perf_counter(), {}
    k, seed = -1, args.seed - 1
    while k + 1 < args.cases:
        seed += 1
        case = make_fast_case(seed, args.calls, args.masked_lengths, args.sizes)
        if (args.masked or args.masked_lengths) and not case.masking:
            continue
        if args.masked_lengths and all(c.lengths is None for c in case.calls):
            continue
        k += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                for name, n in run_case(case).items():
                    totals[name] = totals.get(name, 0) + n
        except Exception as e:  # noqa: BLE001 (every failure is reported, then the next case)
            slow = None
            if isinstance(e, AssertionError):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    slow = slow_paths_fail(case)
            if slow is not None:  # the oracle's tolerance, not the fast paths
                conditioned.append(seed)
                print(f"ILL-CONDITIONED seed {seed} (the slow paths fail too: {slow[:300]})")
                continue
            failures.append(seed)
            print(f"FAIL seed {seed}: {type(e).__name__}: {str(e).strip()[:600]}")
            print("".join(traceback.format_exception(e)[-4:]).rstrip())
            print(case.describe(), "\n", flush=True)
            if len(failures) >= args.max_failures:
                break
        if (k + 1) % 10 == 0:
            print(
                f"{k + 1} cases, {len(failures)} failed, {time.perf_counter() - start:.0f} s, "
                f"{totals}",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"{k + 1} cases from seed {args.seed} to {seed}: {len(failures)} failed {failures}; "
        f"{len(conditioned)} ill-conditioned (the slow paths fail too) {conditioned}; {totals}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
