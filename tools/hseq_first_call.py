"""A Seq* module's first call and steady step (hseq): one fresh process per measurement, so run it
alternating between checkouts (PYTHONPATH picks the package):

    for i in 1 2 3; do for co in /tmp/base $PWD; do
        PYTHONPATH=$co python tools/hseq_first_call.py --module SeqLSTM --T 50 400; done; done

Per T: process CPU of the first training call (forward + backward: trace, compile, run), of a
second T + 1 call (a new length: rolled re-emits the template, unrolled traces again) and the
median steady forward + backward over --steps calls at T; float64, B = 2, H = D = 8 (hux's
BENCHMARKS point) unless --B / --H / --dtype, the NumPy plan unless --backend. `--fast` runs
Sequencer(to_fast_lstm()) (SeqGRU: Sequencer(to_gru()))."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import tapernn as tn
from tapernn import nn


def make(name: str, fast: bool, backend: str, H: int, dtype: str):
    m = getattr(nn, name)(H, H) if name != "SeqLSTMP" else nn.SeqLSTMP(H, H, H)
    if fast:
        m = nn.Sequencer(m.to_gru() if name == "SeqGRU" else m.to_fast_lstm())
    m.set_plan_options(tn.PlanOptions(backend=backend))
    return m.astype(dtype)


def call(m, x) -> float:
    t0 = time.process_time()
    y = m.forward(x)
    m.backward(x, np.ones_like(y))
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default="SeqLSTM")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--T", type=int, nargs="+", default=[50, 400])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--dtype", default="float64")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    where = tn.__file__.rsplit("/tapernn/", 1)[0]
    for T in args.T:
        m = make(args.module, args.fast, args.backend, args.H, args.dtype)
        shape = (args.B, args.H)
        first = call(m, rng.standard_normal((T,) + shape).astype(args.dtype))
        again = call(m, rng.standard_normal((T + 1,) + shape).astype(args.dtype))
        x = rng.standard_normal((T,) + shape).astype(args.dtype)
        steady = statistics.median(call(m, x) for _ in range(args.steps))
        print(
            f"{where} {args.module}{' fast' if args.fast else ''} ({T}, {args.B}, {args.H}) "
            f"{args.backend} {args.dtype}: first {first:.3f} s, "
            f"T+1 {again:.3f} s, steady {steady * 1e3:.2f} ms, traces {m.trace_count}"
        )


if __name__ == "__main__":
    main()
