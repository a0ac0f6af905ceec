"""Thread CPU of a split loop's two halves (issue 19, BENCHMARKS.md "h512"): a FastLSTM (B, T, H)
numba training step is run until its halves are single numba calls (step_loop._Bound), the
forward's and the reverse loop's two halves are caught in one more step, then each is called
again on this thread, interleaved with `T` bare packed GEMMs of the halves' shapes, and the
median thread CPU of each printed. The tree to import is the second argument, so two trees'
kernels can be compared in alternating processes (the loop kernels of either are their own
modules: no A/B flag inside one process).

Run: python tools/replay_halves.py 32,50,512 /path/to/tree [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("tree")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    sys.path.insert(0, args.tree)
    import numpy as np

    import tapernn as tn
    from tapernn import nn
    from tapernn.backends import packed, step_loop

    B, T, H = (int(v) for v in args.config.split(","))
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype("float32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype("float32")
    g = rng.standard_normal((T, B, H)).astype("float32")

    def step() -> None:
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    for _ in range(4):
        step()
    caught = []
    real = step_loop._Bound.__call__
    step_loop._Bound.__call__ = lambda self: caught.append(self) or real(self)
    step()
    step_loop._Bound.__call__ = real
    pk = packed._kernel_module()
    h = B // 2
    fw = packed.pack_panels(rng.standard_normal((H, 4 * H)).astype("float32"))
    bw = packed.pack_panels(rng.standard_normal((4 * H, H)).astype("float32"))
    a, o = np.ones((h, H), "float32"), np.empty((h, 4 * H), "float32")
    a2, o2 = np.ones((h, 4 * H), "float32"), np.empty((h, H), "float32")
    arms = {f"{'bwd' if b.loop.reverse else 'fwd'} half {k % 2}": b for k, b in enumerate(caught)}
    arms[f"{T} packed GEMMs ({h},{H})x({H},{4 * H})"] = lambda: [
        pk.packed_matmul_serial(a, fw, o) for _ in range(T)
    ]
    arms[f"{T} packed GEMMs ({h},{4 * H})x({4 * H},{H})"] = lambda: [
        pk.packed_matmul_serial(a2, bw, o2) for _ in range(T)
    ]
    res: dict[str, list[float]] = {k: [] for k in arms}
    print(f"{args.tree} ({B},{T},{H}) load {os.getloadavg()}")
    for _ in range(args.rounds):
        for k, f in arms.items():
            t = time.thread_time()
            f()
            res[k].append(time.thread_time() - t)
    for k, v in res.items():
        print(f"    {k:36s} {np.median(v) * 1e3:7.2f} ms (min {min(v) * 1e3:.2f})")


if __name__ == "__main__":
    main()
