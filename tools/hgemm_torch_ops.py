"""torch nn.LSTM's f32 training step taken apart next to tapernn's (issue 19, branch hgemm).

torch runs an LSTM as two aten ops, `mkldnn_rnn_layer` and `mkldnn_rnn_layer_backward`: oneDNN's
RNN primitive (implementation "ref": its own JIT sgemm for the GEMMs, JIT post-GEMM cell kernels,
a bias-gradient reduction), with weight reorders around each call. To split it without its
internals, each arm runs in a process of its own, alternating:

- forward and backward wall (and process CPU) per step, at input size D = H and at D = 1: the
  difference is the time-batched input-side GEMMs (forward: the projection X W_x^T; backward:
  dW_x = dZ^T X and dX = dZ W_x), the D = 1 step the loops (plus dW_h = dZ^T H in the backward);
- `--verbose`: ONEDNN_VERBOSE=profile_exec's time of each primitive (the two RNN calls, the
  reorders), medians over the steps;
- the same split for tapernn's Sequencer(FastLSTM(D, H)) on the numba backend (its plan at D = 1
  is not the same as at D = H: there only torch's D = 1 step is a clean decomposition; see
  tools/timeline_step.py for tapernn's own timeline).

Run: PYTHONPATH=$PWD python tools/hgemm_torch_ops.py --configs 32,50,256 [--rounds 2] [--nice]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(which: str, B: int, T: int, D: int, H: int, steps: int, nice: bool) -> None:
    """One arm's steps in this process: prints a JSON line of per-step walls and CPUs."""
    if nice:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from timeline_step import nice_autogroup

        nice_autogroup()
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    g = rng.standard_normal((T, B, H)).astype(np.float32)
    if which == "torch":
        import torch

        torch.set_num_threads(2)
        lstm = torch.nn.LSTM(D, H)
        xt = torch.from_numpy(x).requires_grad_(True)
        gt = torch.from_numpy(g)

        def forward():
            lstm.zero_grad(set_to_none=True)
            xt.grad = None
            return lstm(xt)[0]

        def backward(out):
            out.backward(gt)

    else:
        sys.path.insert(0, str(ROOT))
        import tapernn as tn
        from tapernn import nn

        tn.set_backend("numba")
        tn.manual_seed(0)
        seq = nn.Sequencer(nn.FastLSTM(D, H)).astype("float32")

        def forward():
            return seq.forward(x)

        def backward(_):
            seq.zero_grad_parameters()
            seq.backward(x, g)

    rows = []
    for i in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = forward()
        t1, c1 = time.perf_counter(), time.process_time()
        backward(out)
        t2, c2 = time.perf_counter(), time.process_time()
        if i >= steps // 4:
            rows.append((t1 - t0, c1 - c0, t2 - t1, c2 - c1))
    print("ROWS " + json.dumps(rows), flush=True)


def verbose_times(text: str) -> dict:
    """ONEDNN_VERBOSE=profile_exec lines -> {primitive kind: [ms, ...]} (reorders summed a step)."""
    per: dict[str, list] = {}
    reorder = 0.0
    for line in text.splitlines():
        f = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in f[:4]:
            continue
        kind = f[5]
        ms = float(f[-1])
        if kind == "rnn":
            per.setdefault(f"rnn {f[7]}", []).append(ms)
            if f[7] == "backward":
                per.setdefault("reorders a step", []).append(reorder)
                reorder = 0.0
        elif kind == "reorder":
            reorder += ms
    return per


def run(which, cfg, steps, nice, verbose=False) -> tuple[list, dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if verbose:
        env["ONEDNN_VERBOSE"] = "profile_exec"
    args = [sys.executable, __file__, "--child", which, ",".join(map(str, cfg)), str(steps)]
    res = subprocess.run(
        args + ["--nice"] * nice, check=False, env=env, capture_output=True, text=True
    )
    rows = next((json.loads(s[5:]) for s in res.stdout.splitlines() if s.startswith("ROWS ")), None)
    if rows is None:
        raise RuntimeError(f"{which} {cfg}: {res.stderr[-2000:]}")
    return rows, verbose_times(res.stdout) if verbose else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["32,50,256"], help="B,T,H")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--nice", action="store_true", help="own autogroup at nice -19 (root)")
    ap.add_argument("--verbose", action="store_true", help="torch: oneDNN's primitive times too")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        which, cfg, steps = args.child
        B, T, D, H = (int(v) for v in cfg.split(","))
        child(which, B, T, D, H, int(steps), args.nice)
        return
    print("load", os.getloadavg())
    for c in args.configs:
        B, T, H = (int(v) for v in c.split(","))
        got: dict = {}
        for _ in range(args.rounds):
            for which in ("tapernn", "torch"):
                for D in (H, 1):
                    rows, per = run(which, (B, T, D, H), args.steps, args.nice, args.verbose)
                    got.setdefault((which, D), []).extend(rows)
                    for k, v in per.items():
                        got.setdefault((which, D, k), []).extend(v)
        print(f"({B}, {T}, {H}) f32, ms a step: median (min) over {args.rounds} processes an arm")
        for key, v in got.items():
            if len(key) == 3:
                print(f"  {key[0]:8s} D={key[1]:<5d} {key[2]:24s} {statistics.median(v):8.3f}")
                continue
            cols = list(zip(*v))
            cells = [
                f"{n} {1e3 * statistics.median(x):8.2f} ({1e3 * min(x):7.2f})"
                for n, x in zip(("fwd", "fwd cpu", "bwd", "bwd cpu"), cols)
            ]
            print(f"  {key[0]:8s} D={key[1]:<5d} " + "  ".join(cells))
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
