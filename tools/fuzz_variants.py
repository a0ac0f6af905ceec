"""Random cells (tests/cell_fuzz.py) under the ways users drive them (tests/cell_fuzz_variants.py):
unroll=True, need_grad_input=False, lengths=, remembered chunks, BiSequencer, Repeater, Recursor;
outputs vs NumPy, gradients vs central differences, float32 vs float64.

Run: python tools/fuzz_variants.py [--cases 500] [--seed 0] [--backend numpy|numba]
     [--variants unroll,lengths,...] [--max-failures 20]
Exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from cell_fuzz_variants import VARIANTS, check_variant, make_case

import tapernn as tn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-failures", type=int, default=20)
    parser.add_argument("--progress", type=int, default=20, help="report every N cases")
    args = parser.parse_args(argv)
    tn.set_backend(args.backend)
    variants = args.variants.split(",")
    failures, ran, start = [], 0, time.perf_counter()
    for k, seed in enumerate(range(args.seed, args.seed + args.cases)):
        case = make_case(seed)
        for v in variants:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ran += check_variant(case, v)
            except Exception as e:  # noqa: BLE001
                failures.append((seed, v))
                print(f"FAIL seed {seed} {v}: {type(e).__name__}: {str(e).strip()[:600]}")
                print("".join(traceback.format_exception(e)[-4:]).rstrip())
                print(case.describe(), "\n", flush=True)
        if len(failures) >= args.max_failures:
            break
        if (k + 1) % args.progress == 0:
            print(
                f"{k + 1} cases, {ran} variant runs, {len(failures)} failed, "
                f"{time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    print(f"{k + 1} cases from seed {args.seed}: {ran} runs, {len(failures)} failed {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
