"""What the tools/ab_*.py A/B scripts share: one tapernn training step (forward over T and BPTT
through the module API) of a Sequencer on the numba backend, with a hook each call runs first
(the arm's settings: module flags the arms flip between calls)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (this checkout's tapernn)
import tapernn as tn
from tapernn import nn


def training_step(
    x: np.ndarray,
    g: np.ndarray,
    H: int,
    before: Callable[[], None] = lambda: None,
    cell: str = "FastLSTM",
    options: dict | None = None,
) -> tuple[Callable[[], None], nn.Sequencer]:
    """(step, model): `step()` runs `before()`, forward(x), zero_grad_parameters, backward(x, g)
    on a Sequencer(cell(H, H)) of x's dtype, seeded 0, with PlanOptions(**options) if given."""
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(getattr(nn, cell)(H, H)).astype(x.dtype)
    if options:
        seq.set_plan_options(tn.PlanOptions(**options))

    def step() -> None:
        before()
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    return step, seq


def config_arms(
    text: str, dtype: str, names: list[str], make: Callable, torch: bool = True, cell: str = ""
) -> tuple[tuple[int, int, int], dict, dict]:
    """For a config "B,T,H": ((B, T, H), arms, models): each name's (step, model) from
    make(B, T, H, dtype, x, g, name[, cell]) on seeded data, and torch nn.LSTM float32 on the
    same data as arm "torch" (tools/proto_own.torch_step) unless `torch` is False."""
    B, T, H = (int(v) for v in text.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    arms, models = {}, {}
    for name in names:
        extra = (cell,) if cell else ()
        arms[name], models[name] = make(B, T, H, dtype, x, g, name, *extra)
    if torch:
        from proto_own import torch_step

        arms["torch"] = torch_step(B, T, H, "float32", x.astype(np.float32), g.astype(np.float32))
    return (B, T, H), arms, models


def interleaved(arms: dict, reps: int, batch: int, rest: float = 0.1) -> dict:
    """Times the arms round-robin, `batch` calls each after a `rest` (BLAS pools spin ~0.1 s),
    `reps` rounds: {name: (wall, process CPU, thread CPU)} lists of seconds per call."""
    res = {k: ([], [], []) for k in arms}
    for _ in range(reps):
        for k, f in arms.items():
            time.sleep(rest)
            c, tc, t = time.process_time(), time.thread_time(), time.perf_counter()
            for _ in range(batch):
                f()
            res[k][0].append((time.perf_counter() - t) / batch)
            res[k][1].append((time.process_time() - c) / batch)
            res[k][2].append((time.thread_time() - tc) / batch)
    return res


def alternating(arms: dict, reps: int, batch: int) -> dict:
    """`interleaved` over `reps` rounds of one, the arms' order reversed every other round:
    {name: (wall, process CPU, thread CPU)} lists of seconds per call."""
    res = {k: ([], [], []) for k in arms}
    for r in range(reps):
        names = list(arms) if r % 2 == 0 else list(arms)[::-1]
        one = interleaved({k: arms[k] for k in names}, 1, batch)
        for k in arms:
            for acc, v in zip(res[k], one[k]):
                acc.extend(v)
    return res


def grads_equal(models: dict, names: list[str]) -> bool:
    """Whether every model's parameter gradients equal the first's, bit for bit."""
    first = models[names[0]].parameters()
    return all(
        np.array_equal(p.grad, q.grad)
        for m in names[1:]
        for p, q in zip(first, models[m].parameters())
    )


def print_arms(res: dict, base: str) -> None:
    """Per arm: median wall (min), process CPU, the calling thread's CPU (min), x the `base` arm."""
    ref = np.median(res[base][0])
    for k, (wall, cpu, thread) in res.items():
        print(
            f"  {k:7s} wall {np.median(wall) * 1e3:8.2f} ms (min {min(wall) * 1e3:8.2f})"
            f"  CPU {np.median(cpu) * 1e3:8.2f}  caller CPU {np.median(thread) * 1e3:8.2f}"
            f" (min {min(thread) * 1e3:8.2f})  x {base} {np.median(wall) / ref:.3f}"
        )


def print_ratios(res: dict, names: list[str]) -> None:
    """The median over rounds of the first arm's wall / each other arm's, and the load."""
    for m in names[1:]:
        per = [o / n for o, n in zip(res[names[0]][0], res[m][0])]
        print(f"  per-round wall {names[0]}/{m} median {np.median(per):.3f}")
    print(f"  load {os.getloadavg()}", flush=True)


def arm_parser(arms: dict, default: list[str]) -> argparse.ArgumentParser:
    """The A/B scripts' common options: --configs, --reps, --batch, --dtype, --arms, --no-torch."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,512"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--arms", nargs="+", default=default, choices=list(arms))
    ap.add_argument("--no-torch", action="store_true", help="without torch nn.LSTM's arm")
    return ap
