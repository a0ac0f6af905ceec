"""Random tn.scan cells through the translated step loops with and without PlanOptions.step_direct
(branch hfuse): each cell's gradient graph compiled both ways must agree bit for bit and with the
reference interpreter (float64, 1e-10 relative). Cells: h' from random sigmoid/tanh/products/sums
of the four column blocks of x + h @ U and h, and a ys concatenating random values of the step.

Run: PYTHONPATH=$PWD python tools/fuzz_step_fuse.py --cases 20 [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import tapernn as tn
from tapernn.backends import step_fuse, step_pass
from tapernn.interpret import interpret

B, D, H = 17, 8, 256


def make_body(rng):
    n_ops = int(rng.integers(3, 9))
    plan = []
    for k in range(n_ops):
        op = ["sigmoid", "tanh", "mul", "add", "sub"][int(rng.integers(5))]
        plan.append((op, int(rng.integers(5 + k)), int(rng.integers(5 + k))))
    picks = rng.choice(5 + n_ops, size=int(rng.integers(2, 5)), replace=False)

    def step(h, x, u):
        z = x + h @ u
        pool = [z[:, k * H : (k + 1) * H] for k in range(4)] + [h]
        for op, a, b in plan:
            if op in ("sigmoid", "tanh"):
                pool.append(getattr(tn, op)(pool[a]))
            else:
                pool.append(
                    {"mul": pool[a] * pool[b], "add": pool[a] + pool[b], "sub": pool[a] - pool[b]}[
                        op
                    ]
                )
        h2 = tn.tanh(pool[-1])
        return [h2, h2, tn.concat([pool[int(p)] for p in picks], axis=1)]

    z = np.zeros
    return tn.trace(step, z((B, H)), z((B, 4 * H)), z((H, 4 * H)), names=["h", "x", "u"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tn.set_backend("numba")
    bad = 0
    for case in range(args.seed, args.seed + args.cases):
        rng = np.random.default_rng(case)
        body = make_body(rng)
        arrays = [
            rng.standard_normal((B, H)) * 0.5,
            rng.standard_normal((4, B, 4 * H)),
            rng.standard_normal((H, 4 * H)) / np.sqrt(H),
        ]
        w = rng.standard_normal((4, B, 4 * H))

        def loss(h, x, u, body=body, w=w):
            r = tn.scan(body, [h], [x], [u])
            c = r.ys[1]
            return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(c * w[..., : c.shape[-1]])

        graph = tn.grad(tn.trace(loss, *arrays))
        want = interpret(graph, *arrays)
        got, ran = {}, {}
        for direct in (True, False):
            options = tn.PlanOptions(
                batch_split="on", layout="batch", own_threads="on", step_direct=direct
            )
            compiled = tn.compile(graph, options=options, backend="numba")
            before = step_pass.CALLS[0] + step_fuse.CALLS[0]
            for _ in range(3):
                got[direct] = [np.array(a) for a in compiled(*arrays)]
            ran[direct] = step_pass.CALLS[0] + step_fuse.CALLS[0] - before
        same = all(np.array_equal(a, b) for a, b in zip(got[True], got[False]))
        err = max(
            float(np.max(np.abs(a - c)) / (np.max(np.abs(c)) + 1e-300))
            for a, c in zip(got[True], want)
        )
        ok = same and err < 1e-10
        bad += not ok
        print(
            f"case {case}: ran {ran[True]} fused calls, bit-identical {same}, "
            f"rel err vs interpreter {err:.1e} {'ok' if ok else 'FAIL'}",
            flush=True,
        )
    print(f"{bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
