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
from typing import Any

import numpy as np

from . import executor
from .autodiff import grad
from .backends import background
from .graph import Graph
from .passes.layout import relayout_before_grad
from .passes.layout_rule import MARGIN, noisy, set_step_timer
from .plan_options import PlanOptions
from .scan_ir import scan
from .tracing import trace
from .tuning import gc_paused

TRIAL_STEPS = 8  # loop length timed (the choice is per body: every length shares it)
ROUNDS = 5  # clean interleaved rounds at most (each runs both layouts once) ...
MAX_ROUNDS = 9  # ... or this many while they are noisy (layout_rule.noisy)
MIN_ROUNDS = 3
ATTEMPTS = 20  # rounds run at most, clean or not (a round the numba compiler overlapped is not)
BUDGET = 0.5  # seconds of timing after which no further round starts (past MIN_ROUNDS) ...
# (noisy rounds: twice this)
WARM_CALLS = 8  # a numba program's switch call is reached when it is at most this
WAIT = 60.0  # seconds waited at most for the numba compiler's queue before timing
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
    """The compiled (forward + backward) loop, batch-major and feature-major, on one thread
    (PlanOptions.own_threads "off"; the rule limits BLAS to one thread)."""
    g = loop_graph(body, nc, nx)
    out = []
    for layout in ("batch", "feature"):
        rel, _, chosen = relayout_before_grad(g, layout)
        joint = grad(rel, seeds="inputs")
        # (one thread: an owned worker thread's CPU -- its spin after a call too -- landed in
        # the next timed call, whichever layout's: batch-major's rounds alternated 4.2 / 6 ms)
        options = dataclasses.replace(
            PlanOptions(), layout=chosen, backend=backend, own_threads="off"
        )
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
    """(batch-major, feature-major) CPU seconds of the whole loop per clean interleaved round
    (the order alternates), timing only compiled code: each program is first called until it
    runs what it will run from then on (`_warm`), the numba compiler's queue is waited for
    (up to WAIT s), and a round during which the compiler worked (background.activity: its CPU
    time is the process's) is run again. Past MIN_ROUNDS clean rounds the trial stops once
    BUDGET is spent or the pick is clear -- unless the rounds are noisy (layout_rule.noisy),
    which run on up to MAX_ROUNDS (the rule then refuses to decide). Fewer than MIN_ROUNDS
    clean rounds in ATTEMPTS: none returned (no decision)."""
    with gc_paused():
        progs = step_programs(body, nc, nx, backend)
    rng = np.random.default_rng(0)
    args = [_arguments(p.graph, rng) for p in progs]
    for p, a in zip(progs, args):
        _warm(p, a)
    background.wait(WAIT)
    rounds: list[tuple[float, float]] = []
    deadline = time.perf_counter() + BUDGET
    for attempt in range(ATTEMPTS):
        t = [0.0, 0.0]
        before = background.activity()
        for j in (0, 1) if attempt % 2 == 0 else (1, 0):
            start = _clock()
            progs[j](*args[j])
            t[j] = _clock() - start
        if before[2] or background.activity() != before:
            background.wait(WAIT)  # (a kernel compiled meanwhile: its CPU time is in the round)
            continue
        rounds.append((t[0], t[1]))
        if len(rounds) < MIN_ROUNDS:
            continue
        if len(rounds) >= MAX_ROUNDS or time.perf_counter() > deadline + BUDGET:
            break
        if not noisy(rounds) and (
            len(rounds) >= ROUNDS or time.perf_counter() > deadline or _clear(rounds)
        ):
            break
    return rounds if len(rounds) >= MIN_ROUNDS else []


def _warm(program: Any, args: list[np.ndarray]) -> None:
    """Call `program` until its next calls run what it will run from then on: at least once
    (first-touch costs; kernels compiled at a call site's first call); on the numba backend
    compiling in the background up to its switch call, which waits for its kernels (the
    "auto" backend's, a thousand calls on, is not reached: its early calls run NumPy, as the
    trial times them), and on while a call asked the compiler for more (a loop's kernels are
    asked for in later calls), each time after the compiler's queue is done."""
    gate = program.__dict__.get("run")
    for _ in range(WARM_CALLS):
        before = background.activity()
        program(*args)
        quiet = not before[2] and background.activity() == before
        pending = isinstance(gate, background.Gate) and gate.calls < gate.at <= WARM_CALLS
        if quiet and not pending:
            return
        background.wait(WAIT)


def _clear(rounds: list[tuple[float, float]]) -> bool:
    """The best rounds' ratio is CLEAR times off the rule's margin: more rounds (load only
    adds time, so they can only lower each best) would not change the pick."""
    tb, tf = min(b for b, _ in rounds), min(f for _, f in rounds)
    return tf > CLEAR * MARGIN * tb or tf * CLEAR < MARGIN * tb


set_step_timer(time_steps)
