"""A/B of branch hblas (issue 19) in one process, interleaved with rests (the arms' order reversed
every other round): the same FastLSTM training step (numba, owned) with the projection's halves
as on main ("old": np.matmul then np.add over each half's rows) and through blas_gemm ("new": the
bias copied into the rows, OpenBLAS's GEMM accumulating onto it with beta = 1), each arm its own
model (same seed; their gradients are bit-equal where the projection's depth fits in one of
OpenBLAS's K blocks, e.g. H = 256, and differ in the last bits otherwise). Prints per arm: step
wall, process CPU, the caller thread's CPU (medians, minima), the ratio, the thread CPU of
the projection's halves a step (caller's and worker's summed) and the load.

--backend numpy: the NumPy backend's step (not owned: the whole projection onto its bias),
"old" with PlanOptions(bias_in_gemm=False) -- the GEMM and the add two lines (its "halves"
line then stays 0; new's is the whole GEMM onto its bias).

--parts: the projection's GEMM + bias alone, owned halves and whole (`parts`).

Run: PYTHONPATH=$PWD python tools/ab_blas_gemm.py --configs 32,50,256 32,50,512 --reps 15
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
from ab_common import (
    alternating,
    arm_parser,
    config_arms,
    grads_equal,
    print_arms,
    print_ratios,
    training_step,
)

import tapernn as tn
from tapernn import blas, blas_gemm, own_threads

ARMS = {"old": 1 << 62, "new": blas_gemm.MIN_BYTES}
MODE = ["old"]
BACKEND = ["numba"]
HALVES: dict = {}  # arm -> thread CPU seconds of the projection's halves, both threads
_lock = threading.Lock()
_real = own_threads._mm_bias


def _timed_half(a, b, out, bias):
    t = time.thread_time()
    try:
        return _real(a, b, out, bias)
    finally:
        with _lock:
            HALVES[MODE[0]] = HALVES.get(MODE[0], 0.0) + time.thread_time() - t


own_threads._mm_bias = _timed_half


def settings(mode: str) -> None:
    MODE[0] = mode
    blas_gemm.MIN_BYTES = ARMS[mode]


def make(B, T, H, dtype, x, g, mode):
    if BACKEND[0] == "numpy":  # (old: the bias add its own line, PlanOptions.bias_in_gemm)
        mark = lambda: MODE.__setitem__(0, mode)
        return training_step(x, g, H, mark, options={"bias_in_gemm": mode == "new"})
    return training_step(x, g, H, lambda: settings(mode))


def parts(text: str, dtype: str, reps: int) -> None:
    """The projection alone, (T*B, H) x (H, 4H) with W^T a transposed view, through
    own_threads.matmul_bias: its two owned halves (the numba step's) and the whole GEMM (the
    NumPy backend's, at one BLAS thread), old vs new interleaved, the arms' order alternating: medians of the
    caller's thread CPU (owned: the caller's half and the join) and of the wall."""
    B, T, H = (int(v) for v in text.split(","))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((T * B, H)).astype(dtype)
    b = rng.standard_normal((4 * H, H)).astype(dtype).T
    bias = rng.standard_normal(4 * H).astype(dtype)
    out = np.empty((T * B, 4 * H), dtype)

    def once(mode: str, owned: bool) -> tuple[float, float]:
        settings(mode)
        t, c = time.perf_counter(), time.thread_time()
        call = lambda _: own_threads.matmul_bias(a, b, bias, out.shape, out=out)
        if owned:
            own_threads.run(call, None)
        else:  # (at one BLAS thread, as such a program's calls run: blas.program_threads)
            with blas.limiter.limit(1):
                call(None)
        return time.thread_time() - c, time.perf_counter() - t

    for owned in (True, False):
        got: dict = {"old": [], "new": []}
        for r in range(reps):
            for mode in ("old", "new") if r % 2 else ("new", "old"):
                got[mode].append(once(mode, owned))
        med = {k: np.median(np.array(v), axis=0) * 1e3 for k, v in got.items()}
        print(
            f"  ({T * B}, {H}) x ({H}, {4 * H}) {dtype} {'owned halves' if owned else 'whole'}:"
            f" caller CPU old {med['old'][0]:.3f} new {med['new'][0]:.3f} ms"
            f" ({med['new'][0] / med['old'][0]:.3f}x), wall old {med['old'][1]:.3f}"
            f" new {med['new'][1]:.3f} ms, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


def main():
    ap = arm_parser(ARMS, ["old", "new"])
    ap.add_argument("--backend", default="numba", choices=["numba", "numpy"])
    ap.add_argument("--parts", action="store_true", help="the projection alone (`parts`)")
    args = ap.parse_args()
    BACKEND[0] = args.backend
    if args.parts:
        for text in args.configs:
            parts(text, args.dtype, args.reps)
        return
    for text in args.configs:
        print(f"load {os.getloadavg()}", flush=True)
        _, arms, models = config_arms(text, args.dtype, args.arms, make, not args.no_torch)
        tn.set_backend(args.backend)  # (the models compile at their first calls)
        for f in arms.values():
            for _ in range(3):
                f()
        HALVES.clear()
        calls = blas_gemm.CALLS[0]
        res = alternating(arms, args.reps, args.batch)
        same = grads_equal(models, args.arms)
        print(
            f"({text}) {args.dtype}, {args.reps} rounds x {args.batch} steps, gradients"
            f" bit-equal: {same}, blas_gemm calls {blas_gemm.CALLS[0] - calls}"
        )
        for k in args.arms:
            src = models[k]._runtime.last.training_pair.forward.program.source
            fused = "np_matmul_bias(" in src or "np_matmul_room" in src  # (own_room wraps it)
            print(f"  {k}: the bias in the projection's line: {fused}")
        print_arms(res, "torch" if "torch" in res else args.arms[0])
        steps = args.reps * args.batch
        each = "  ".join(f"{m} {HALVES.get(m, 0) / steps * 1e3:.3f}" for m in args.arms)
        print(f"  projection halves, thread CPU of both, ms a step: {each}")
        if "old" in res and "new" in res:  # (paired: the same round's old and new steps)
            diff = np.subtract(res["old"][1], res["new"][1]) * 1e3
            q1, med, q3 = np.percentile(diff, [25, 50, 75])
            print(
                f"  process CPU old - new, paired by round: median {med:.2f} ms (IQR {q1:.2f}, {q3:.2f})"
            )
        print_ratios(res, args.arms)


if __name__ == "__main__":
    main()
