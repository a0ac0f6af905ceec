"""A/B of get_grad_hidden_state's tap (issue 19, branch htap) in one process, interleaved with
rests: the same FastLSTM training step (numba, owned) with the tap's fingerprints by zlib's
CRC-32 + XOR ("old", the kind before htap) or by the numba digest ("new", nn/tap_digest.py), and
"refs" (a probe, not built: nothing copied, every argument and seed fingerprinted by the numba
digest and held by reference), next to torch nn.LSTM f32. Prints each arm's step wall and the
tap's own time (state_grads.tap_copies, serial on the caller), medians and minima.

Run: PYTHONPATH=$PWD python tools/ab_tap.py --configs 32,50,256 32,50,512 --reps 15
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from ab_common import training_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapernn.nn import state_grads, steady_source, tap_digest

MODE = ["new"]
TAP: dict = {}
_orig_copies = state_grads.tap_copies
_orig_kernel = tap_digest.kernel


def _copies(arrays, room, watch=frozenset()):
    t = time.perf_counter()
    try:
        if MODE[0] == "refs" and room is not None:
            return _orig_copies(arrays, room[:0], frozenset(range(len(arrays))))
        return _orig_copies(arrays, room, watch)
    finally:
        TAP.setdefault(MODE[0], []).append(time.perf_counter() - t)


def _kernel():
    return None if MODE[0] == "old" else _orig_kernel()


state_grads.tap_copies = steady_source.tap_copies = _copies
tap_digest.kernel = _kernel


def tn_step(B, T, H, dtype, x, g, mode):
    return training_step(x.astype(dtype), g.astype(dtype), H, lambda: MODE.__setitem__(0, mode))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    from proto_own import torch_step

    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)
        arms, models = {}, {}
        for mode in ("old", "new", "refs"):
            arms[mode], models[mode] = tn_step(B, T, H, args.dtype, x, g, mode)
        arms["torch"] = torch_step(B, T, H, "float32", x.astype(np.float32), g.astype(np.float32))
        for f in arms.values():
            for _ in range(5):
                f()
        tap_digest.KERNEL.fn is not None or time.sleep(2)  # (the digest loaded in the background)
        same = all(
            np.array_equal(p.grad, q.grad)
            for m in ("new", "refs")
            for p, q in zip(models["old"].parameters(), models[m].parameters())
        )
        print(f"gradients of old, new, refs bit-identical: {same}")
        TAP.clear()
        res = {k: [] for k in arms}
        for _ in range(args.reps):
            for k, f in arms.items():
                time.sleep(0.1)
                t = time.perf_counter()
                for _ in range(args.batch):
                    f()
                res[k].append((time.perf_counter() - t) / args.batch)
        base = np.median(res["torch"])
        for k, w in res.items():
            tap = TAP.get(k)
            tp = f", tap {np.median(tap) * 1e3:.3f} ms (min {min(tap) * 1e3:.3f})" if tap else ""
            print(
                f"({B},{T},{H}) {args.dtype} {k:6s} wall {np.median(w) * 1e3:7.2f} ms"
                f" (best {min(w) * 1e3:7.2f}) = {np.median(w) / base:.3f}x torch{tp}"
            )
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
