"""hdrop's before/after: `tapernn train --dropout`'s model (CharLM: embedding, `--layers`
FastLSTMs each followed by Dropout in one Sequencer step, a linear decoder; hidden 256, embed 64,
batch 32, float64: train's defaults) -- one training call's process CPU time (forward over T,
the loss gradient, BPTT) at its first call (trace + compile, numba's kernels compiled in the
call: $TAPERNN_NUMBA_BACKGROUND=0), at the first call of a second length, and per steady call.
Which tapernn it measures is $PYTHONPATH's (run it once with main's tree, once with this one,
alternating); the kernel cache: point $TAPERNN_KERNEL_CACHE at a fresh directory for cold
compiles. Prints one JSON line.

    PYTHONPATH=$PWD python tools/ab_dropout.py --backend numba --lengths 32,48
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")

import tapernn as tn
from tapernn import nn
from tapernn.apps.charlm import CharLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="numpy", help="numpy, numba or auto")
    ap.add_argument("--lengths", default="32,48", help="T of the first calls, then of the rest")
    ap.add_argument("--calls", type=int, default=8, help="steady calls timed at the first T")
    ap.add_argument("--warm", type=int, default=1, help="untimed calls before them (auto: 100)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--unroll", action="store_true", help="the Sequencer unroll=True")
    args = ap.parse_args()
    tn.set_backend(args.backend)
    tn.manual_seed(1)
    V = 60
    lm = CharLM(V, nn.FastLSTM, args.layers, 64, args.hidden, args.dropout, dtype="float64")
    model = lm.model.training()
    if args.unroll:
        lm.recurrent.unroll = True
    rng = np.random.default_rng(0)

    def call(T: int) -> float:
        ids = rng.integers(0, V, (T, args.batch))
        t0 = time.process_time()
        y = model.forward(ids)
        model.zero_grad_parameters()
        model.backward(ids, np.cos(y))
        return time.process_time() - t0

    lengths = [int(v) for v in args.lengths.split(",")]
    first = call(lengths[0])
    other = [call(T) for T in lengths[1:]]
    for _ in range(args.warm):  # (the steady path is planned at a signature's second call)
        call(lengths[0])
    steady = [call(lengths[0]) for _ in range(args.calls)]
    notes = [n for n in model.compile_report().notes if "rolled" in n]
    print(
        json.dumps(
            {
                "tapernn": os.path.dirname(os.path.dirname(tn.__file__)),
                "backend": args.backend,
                "ran": model._runtime.last.compile_training().forward.program.backend,
                "first_s": round(first, 3),
                "new_length_s": [round(v, 3) for v in other],
                "steady_ms": round(1e3 * statistics.median(steady), 2),
                "steady_min_ms": round(1e3 * min(steady), 2),
                "loop": notes[0][:60] if notes else "",
            }
        )
    )


if __name__ == "__main__":
    main()
