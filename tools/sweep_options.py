"""Every compile option a researcher toggles, one at a time (tests/option_sweep.py): each
PlanOptions field away from its default, each DEFAULT pass left out, rolled and unroll=True, on
a stacked masked model with lengths= and remember, against NumPy equations (float64, 1e-12).

Run: python tools/sweep_options.py [--backend numpy|numba] [--hidden 8] [--batch 3]
     [--what options,passes] [--unroll rolled,unrolled]
Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from option_sweep import TOGGLES, cases, dropped, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="numpy", choices=["numpy", "numba"])
    parser.add_argument("--hidden", type=int, default=8, help="H (128+: numba's fast paths)")
    parser.add_argument("--batch", type=int, default=3, help="B (>= 3; 17: an odd split)")
    parser.add_argument("--what", default="options,passes")
    parser.add_argument("--unroll", default="rolled,unrolled")
    args = parser.parse_args(argv)
    unrolls = [{"rolled": None, "unrolled": True}[u] for u in args.unroll.split(",")]
    runs, failed, start = 0, [], time.perf_counter()
    for name, case in cases(args.hidden, args.batch).items():
        todo = []
        if "options" in args.what:
            todo += [(str(t or "defaults"), t, None) for t in TOGGLES]
        if "passes" in args.what:
            todo += [(f"without {what}", {}, lst) for what, lst in dropped()]
        for unroll in unrolls:
            for label, options, passes in todo:
                runs += 1
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        run(case, args.backend, options, unroll, passes)
                except Exception as e:  # noqa: BLE001 (every failure is reported)
                    failed.append((name, label, unroll))
                    print(
                        f"FAIL {name} / {label} / unroll={unroll}: {type(e).__name__}: "
                        f"{str(e).strip()[:400]}",
                        flush=True,
                    )
        print(
            f"{name}: {runs} runs, {len(failed)} failed, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
