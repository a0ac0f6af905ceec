"""Same bits with compile children (BENCHMARKS.md "hcold6"): a cold-cache run of
Sequencer(FastLSTM(H, H)) on backend "numba" whose step loops and own GEMM compiled in child
processes ($TAPERNN_COMPILE_CHILD=`--children`, default 2: the own GEMM's and a step loop's at
once) against one where they compiled in the process (=0): each run a fresh process and fresh
caches, `--calls` training steps (forward, backward, update; every kernel waited for after
call 3, so the later calls run the loaded kernels), printing a digest of the outputs, the
input gradients and the parameters after them, the step-loop calls and the children (how each
ended: "" compiled), the jobs compile_child's server made (hcold7). The two digests must be equal.

    PYTHONPATH=$PWD python tools/child_bits.py --dtype float32 --calls 8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

from cold_jobs import cold_run


def child(args: argparse.Namespace) -> None:
    import numpy as np

    import tapernn as tn
    from tapernn import nn
    from tapernn.backends import background, blas_twin, compile_child, step_loop

    tn.set_backend("numba")
    tn.set_blas_threads(2)  # (no timed choice of the pool: two-thread OpenBLAS's bits differ)
    tn.manual_seed(0)
    T, B, H = map(int, args.shape.split(","))
    dt = np.dtype(args.dtype)
    model = nn.Sequencer(nn.FastLSTM(H, H)).astype(dt)
    rng = np.random.default_rng(0)
    digest, calls = hashlib.sha1(), []
    for call in range(args.calls):
        x = (rng.standard_normal((T, B, H)) * 0.1).astype(dt)
        y = model.forward(x)
        model.zero_grad_parameters()
        gx = model.backward(x, np.cos(y))
        model.update_parameters(0.01)
        digest.update(np.ascontiguousarray(y).tobytes() + np.ascontiguousarray(gx).tobytes())
        calls.append(digest.hexdigest()[:6])  # (the digest so far: where two runs part)
        if call == 2:
            background.wait()
    for p in model.parameters():
        digest.update(
            np.ascontiguousarray(p.data).tobytes() + np.ascontiguousarray(p.grad).tobytes()
        )
    print(
        json.dumps(
            {
                "digest": digest.hexdigest(),
                "calls": calls,
                "step_loop_calls": step_loop.CALLS[0],
                "children": {k[-12:]: j.why for k, j in compile_child._jobs.items()},
                "own_gemm_runs": blas_twin.RAN[0],
                "server_jobs": getattr(compile_child, "FED", [0])[0],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shape", default="50,32,256", help="T,B,H")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--children", default="2", help="$TAPERNN_COMPILE_CHILD of the first arm")
    ap.add_argument("--other", default="0", help="... of the second (the same: run to run)")
    ap.add_argument(
        "--var",
        default="TAPERNN_COMPILE_CHILD",
        help="the variable the arms set (TAPERNN_NUMBA_BACKGROUND: 1 vs 0)",
    )
    args = ap.parse_args()
    if args.child:
        return child(args)
    got = []
    for arm in (args.children, args.other):
        env = dict(os.environ, TAPERNN_LAYOUT_TRIAL="0", **{args.var: arm})
        argv = ["--shape", args.shape, "--dtype", args.dtype, "--calls", str(args.calls)]
        got.append(cold_run(os.path.abspath(__file__), argv, env))
        print(f"{args.var}={arm}: {got[-1]}", flush=True)
    same = got[0]["digest"] == got[1]["digest"]
    print("same bits" if same else "DIFFERENT BITS")


if __name__ == "__main__":
    main()
