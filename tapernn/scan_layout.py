"""The step timer of the "auto" layout rule (passes/layout_rule, issue 19): one loop over
`body` -- forward over TRIAL_STEPS steps and its backward, every input's and carry's gradient --
compiled by the real pipeline once batch-major and once feature-major (relayouted before `grad`,
as the nn runtime does), then run in interleaved rounds and timed in process CPU time (load on
other processes adds little; BLAS threads of this process count). What the layout changes is
all in it: the GEMM orientation, the elementwise work on (n, B) instead of (B, n), the
transposes at the loop's edges, the time-batched weight gradients reading transposed views."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from . import executor
from .autodiff import grad
from .graph import Graph
from .passes.layout import relayout_before_grad
from .passes.layout_rule import MARGIN, set_step_timer
from .plan_options import PlanOptions
from .scan_ir import scan
from .tracing import trace
from .tuning import gc_paused

TRIAL_STEPS = 8  # loop length timed (the choice is per body: every length shares it)
ROUNDS = 5  # interleaved rounds at most (each runs both layouts once)
MIN_ROUNDS = 3
BUDGET = 0.5  # seconds of timing after which no further round starts (past MIN_ROUNDS)
CLEAR = 1.1  # past MIN_ROUNDS, rounds stop when the best times' ratio is this far off MARGIN
_clock = time.process_time


def loop_graph(body: Graph, nc: int, nx: int, length: int | None = None) -> Graph:
    """A graph running `body` as a scan of `length` (default TRIAL_STEPS) steps: inputs the
    initial carries, the stacked xs and the invariants; outputs the final carries and the ys."""
    length = TRIAL_STEPS if length is None else length
    ins = body.inputs
    examples = [np.zeros(i.shape, i.dtype) for i in ins[:nc]]
    examples += [np.zeros((length, *i.shape), i.dtype) for i in ins[nc : nc + nx]]
    examples += [np.zeros(i.shape, i.dtype) for i in ins[nc + nx :]]

    def run(*vs):
        r = scan(body, list(vs[:nc]), list(vs[nc : nc + nx]), list(vs[nc + nx :]))
        return list(r.carries) + list(r.ys)

    return trace(run, *examples)


def step_programs(body: Graph, nc: int, nx: int, backend: str) -> list:
    """The compiled (forward + backward) loop, batch-major and feature-major."""
    g = loop_graph(body, nc, nx)
    out = []
    for layout in ("batch", "feature"):
        rel, _, chosen = relayout_before_grad(g, layout)
        joint = grad(rel, seeds="inputs")
        options = dataclasses.replace(PlanOptions(), layout=chosen, backend=backend)
        out.append(executor.compile(joint, options=options))
    return out


def _arguments(graph: Graph, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for i in graph.inputs:
        if i.dtype.kind == "f":
            out.append((0.2 * rng.random(i.shape, np.float32) - 0.1).astype(i.dtype))
        else:
            out.append(np.zeros(i.shape, i.dtype))
    return out


def time_steps(body: Graph, nc: int, nx: int, backend: str = "") -> list[tuple[float, float]]:
    """(batch-major, feature-major) CPU seconds of the whole loop per interleaved round (the
    order alternates; one untimed warm-up call each first)."""
    with gc_paused():
        progs = step_programs(body, nc, nx, backend)
    rng = np.random.default_rng(0)
    args = [_arguments(p.graph, rng) for p in progs]
    for p, a in zip(progs, args):
        p(*a)
    rounds: list[tuple[float, float]] = []
    deadline = time.perf_counter() + BUDGET
    for r in range(ROUNDS):
        t = [0.0, 0.0]
        for j in (0, 1) if r % 2 == 0 else (1, 0):
            start = _clock()
            progs[j](*args[j])
            t[j] = _clock() - start
        rounds.append((t[0], t[1]))
        if len(rounds) >= MIN_ROUNDS and (time.perf_counter() > deadline or _clear(rounds)):
            break
    return rounds


def _clear(rounds: list[tuple[float, float]]) -> bool:
    """The best rounds' ratio is CLEAR times off the rule's margin: more rounds (load only
    adds time, so they can only lower each best) would not change the pick."""
    tb, tf = min(b for b, _ in rounds), min(f for _, f in rounds)
    return tf > CLEAR * MARGIN * tb or tf * CLEAR < MARGIN * tb


set_step_timer(time_steps)
