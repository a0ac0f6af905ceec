"""A/B of branch h256's changes to the owned (32, 50, 256) training step (issue 19): "old" (this
branch with its changes switched off: PlanOptions(bias_in_gemm=False), step_loop's per-call
argument typing, packed.TRANSPOSED_PACK off: NumPy's strided copy packs W^T) against "new"
(the defaults), and torch nn.LSTM f32 -- one process, interleaved rounds with a rest before each
arm, wall and process CPU per step, medians; the gradients of old and new compared bit for bit.

Run: PYTHONPATH=$PWD python tools/ab_256.py --configs 32,50,256 32,50,512 --reps 15
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import nn
from tapernn.backends import packed, step_loop

_new_pick = step_loop.Halves.pick


def _old_pick(self, args0, args1):  # (step_loop.Halves.pick before h256: b typed every call)
    from tapernn.backends import background

    a, b = self.loops
    self.calls += 1
    if self.calls == 1:
        key = a.key(args0)
        if background.enabled():
            self.ready = background.request(a, key)
            return None
        a.prepare(key)
    elif self.ready is not None:
        self.ready.wait()
        self.ready = None
    if not a.has() or not b.prepare(b.key(args1)):
        self.error = a.error or b.error or "no kernel"
        return None
    return a, b


OLD = {"bias_in_gemm": False}
SWITCHES: list = [  # (module, attribute, old value, new value) flipped for the old arm
    (packed, "TRANSPOSED_PACK", [False], [True]),
]


def tn_step(B, T, H, dtype, x, g, mode, cell="FastLSTM"):
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(getattr(nn, cell)(H, H)).astype(dtype)
    if mode == "old":
        seq.set_plan_options(tn.PlanOptions(**OLD))

    def step():
        old = mode == "old"
        step_loop.Halves.pick = _old_pick if old else _new_pick
        for mod, attr, was, now in SWITCHES:
            setattr(mod, attr, was if old else now)
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    return step, seq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--cell", default="FastLSTM", help="FastLSTM, LSTM or GRU (torch: nn.LSTM)")
    args = ap.parse_args()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)
        arms, models = {}, {}
        for mode in ("old", "new"):
            arms[mode], models[mode] = tn_step(B, T, H, args.dtype, x, g, mode, args.cell)
        if not args.no_torch:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from proto_own import torch_step

            arms["torch"] = torch_step(
                B, T, H, "float32", x.astype(np.float32), g.astype(np.float32)
            )
        for f in arms.values():
            for _ in range(5):
                f()
        same = all(
            np.array_equal(p.grad, q.grad)
            for p, q in zip(models["old"].parameters(), models["new"].parameters())
        )
        print(f"old and new gradients bit-identical: {same}")
        res = {k: ([], []) for k in arms}
        for _ in range(args.reps):
            for k, f in arms.items():
                time.sleep(0.1)
                c, t = time.process_time(), time.perf_counter()
                for _ in range(args.batch):
                    f()
                res[k][0].append((time.perf_counter() - t) / args.batch)
                res[k][1].append((time.process_time() - c) / args.batch)
        base = np.median(res["torch"][0]) if "torch" in res else None
        for k, (w, pcpu) in res.items():
            r = f" = {np.median(w) / base:.3f}x torch" if base else ""
            print(
                f"({B},{T},{H}) {args.cell} {args.dtype} {k:6s} wall {np.median(w) * 1e3:7.2f} ms"
                f" (best {min(w) * 1e3:7.2f}), process CPU {np.median(pcpu) * 1e3:6.2f}{r}"
            )
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
