"""Data-parallel training benchmark: tokens/s of the `tapernn train` char LM on N = 1, 2 MPI ranks
and the share of each step spent averaging gradients; then the allreduce of the parameter bytes
timed with more processes over the network path on one host, to show where adding ranks stops
paying. Usage: python tools/bench_distributed.py [--steps 20] [--ranks 1,2] [--simulate 2,4,8]"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tapernn.apps import distributed as dist


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--ranks", default="1,2", help="N to train with (default 1,2)")
    p.add_argument("--simulate", default="2,4,8", help="N to time the allreduce with")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--vocab", type=int, default=100)
    p.add_argument("--worker", choices=("train", "allreduce"), help=argparse.SUPPRESS)
    p.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


def train_worker(a: argparse.Namespace) -> dict:
    """Time `a.steps` char-LM steps on this rank's rows of a random (T, B) batch stream."""
    from tapernn import optim
    from tapernn import random as tn_random
    from tapernn.apps.charlm import CharLM
    from tapernn.blas import blas_threads
    from tapernn.nn import FastLSTM

    if dist.launched_by_mpi():
        dist.init()
    tn_random.manual_seed(1)
    lm = CharLM(a.vocab, FastLSTM, 1, a.embed, a.hidden)
    dist.broadcast_parameters(lm.parameters())
    lo, hi = dist.shard(a.batch)
    opt = dist.DistributedOptimizer(
        optim.Adam(lm.parameters(), lr=1e-3), clip=5.0, weight=(hi - lo) / a.batch
    )
    reduce_seconds = [0.0]
    synchronize = opt.synchronize

    def timed_synchronize() -> None:
        tick = time.perf_counter()
        synchronize()
        reduce_seconds[0] += time.perf_counter() - tick

    opt.synchronize = timed_synchronize
    ids = np.random.default_rng(0).integers(1, a.vocab, size=(a.seq_len + 1, a.batch))
    x, y = ids[:-1, lo:hi].copy(), ids[1:, lo:hi].copy()
    with blas_threads(1):
        for _ in range(3):  # compile, warm caches
            lm.train_step(x, y, opt, 0)
        reduce_seconds[0] = 0.0
        dist.allreduce_values([0.0], "starting the clock")
        tick = time.perf_counter()
        for _ in range(a.steps):
            lm.train_step(x, y, opt, 0)
        seconds = time.perf_counter() - tick
    return {
        "n": dist.world_size(),
        "rows": hi - lo,
        "step_s": seconds / a.steps,
        "tokens_per_s": a.seq_len * a.batch * a.steps / seconds,
        "allreduce_s": reduce_seconds[0] / a.steps,
        "param_bytes": sum(p.data.nbytes for p in lm.parameters()),
    }


def allreduce_worker(a: argparse.Namespace) -> dict:
    """Time allreduce_gradients on `a.bytes` of float64 gradients laid out like the char LM's."""
    from tapernn.nn import Parameter

    dist.init()
    params = [Parameter(np.ones(n)) for n in _split(a.bytes // 8)]
    for _ in range(3):
        dist.allreduce_gradients(params)
    dist.allreduce_values([0.0], "starting the clock")
    repeats = max(a.steps, 10)
    tick = time.perf_counter()
    for _ in range(repeats):
        dist.allreduce_gradients(params)
    return {"n": dist.world_size(), "allreduce_s": (time.perf_counter() - tick) / repeats}


def _split(n: int) -> list[int]:  # a few large arrays and a small one, as the LM's blocks are
    return [n // 2, n // 4, n // 4 - n // 64, n // 64]


def launch(
    n: int, a: argparse.Namespace, worker: str, env: dict | None = None, **extra: int
) -> dict:
    argv = [sys.executable, __file__, "--worker", worker]
    for key in ("steps", "batch", "seq_len", "hidden", "embed", "vocab"):
        argv += [f"--{key.replace('_', '-')}", str(getattr(a, key))]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    prefix = [] if n == 1 and worker == "train" else dist.launcher_command(n)
    done = subprocess.run(
        prefix + argv,
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, **(env or {})),
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"N={n} {worker} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    a = parse()
    if a.worker:
        result = train_worker(a) if a.worker == "train" else allreduce_worker(a)
        if dist.rank() == 0:
            print(json.dumps(result), flush=True)
        return
    ranks = [int(n) for n in a.ranks.split(",")]
    print(
        f"char LM: FastLSTM hidden {a.hidden}, embed {a.embed}, vocab {a.vocab}, global batch "
        f"{a.batch} x seq-len {a.seq_len}, float64, Adam, 1 BLAS thread per rank, "
        f"{os.cpu_count()} cores\n"
    )
    print(
        "| N | global batch | rows/rank | step (ms) | tokens/s (job) | allreduce (ms) | "
        "share of step |"
    )
    print("|---|---|---|---|---|---|---|")
    param_bytes = 0
    for n in ranks:  # the same global batch split N ways, then B rows on every rank
        for batch in dict.fromkeys([a.batch, a.batch * n]):
            r = launch(n, argparse.Namespace(**{**vars(a), "batch": batch}), "train")
            param_bytes = r["param_bytes"]
            print(
                f"| {n} | {batch} | {r['rows']} | {r['step_s'] * 1e3:.1f} | "
                f"{r['tokens_per_s']:,.0f} | {r['allreduce_s'] * 1e3:.2f} | "
                f"{r['allreduce_s'] / r['step_s']:.1%} |"
            )
    print(f"\nparameter bytes = bytes each rank sends and receives per step: {param_bytes:,}")
    print(
        "\nallreduce of those bytes with N processes on one host, network path "
        "(MPIR_CVAR_NOLOCAL=1: loopback, not shared memory); predicted step = compute of "
        "B/N rows on one process + allreduce:\n"
    )
    print(
        "| N | allreduce (ms) | compute B/N rows (ms) | tokens/s, global batch B | "
        "tokens/s, B rows per rank |"
    )
    print("|---|---|---|---|---|")
    one = launch(1, a, "train")
    print(
        f"| 1 | 0 | {one['step_s'] * 1e3:.1f} | {one['tokens_per_s']:,.0f} (1.00x) | "
        f"{one['tokens_per_s']:,.0f} (1.00x) |"
    )
    for n in [int(n) for n in a.simulate.split(",")]:
        reduce_s = launch(n, a, "allreduce", env={"MPIR_CVAR_NOLOCAL": "1"}, bytes=param_bytes)[
            "allreduce_s"
        ]
        shard = argparse.Namespace(**{**vars(a), "batch": max(a.batch // n, 1)})
        compute_s = launch(1, shard, "train")["step_s"]
        strong = a.seq_len * a.batch / (compute_s + reduce_s)
        weak = n * a.seq_len * a.batch / (one["step_s"] + reduce_s)
        print(
            f"| {n} | {reduce_s * 1e3:.2f} | {compute_s * 1e3:.1f} | {strong:,.0f} "
            f"({strong / one['tokens_per_s']:.2f}x) | {weak:,.0f} "
            f"({weak / one['tokens_per_s']:.2f}x) |"
        )


if __name__ == "__main__":
    main()
