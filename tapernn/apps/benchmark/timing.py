"""What the benchmark tables and the pass ablation share: contenders, FLOP counts, interleaved
timing and the tapernn cell factories."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PEER_REST_S = 0.25  # OpenBLAS workers spin ~0.1 s after a call and slow the other library 2-3x
PEER_BLOCKS = 4  # hand-overs between NumPy and a peer library per config, one rest each
# block timing (`time_blocks`): each block of one contender's steps back to back lasts ~BLOCK_S
BLOCK_S = 0.02
BLOCK_MIN_STEPS, BLOCK_MAX_STEPS, BLOCK_MIN_ROUNDS, BLOCK_MAX_ROUNDS = 10, 5000, 5, 40
NOT_AVAILABLE = "tapernn nn not available"


def lstm_flops(B: int, T: int, D: int, H: int, gates: int = 4, dx: bool = True) -> float:
    """Training FLOPs: forward 2*T*B*(D+H)*gates*H, backward twice that (dx, dh, dW_x, dW_h);
    dx=False leaves out the input gradient's 2*T*B*D*gates*H."""
    return (3 if dx else 2) * 2.0 * T * B * D * gates * H + 3 * 2.0 * T * B * H * gates * H


@dataclass
class Contender:
    name: str
    step: Callable[[], object] | None  # None: not runnable; `note` says why
    flops: float = 0.0
    peer: bool = False  # another library: rest before and after it
    # contenders whose threads differ (a 2-thread OpenBLAS pool, a peer's, tapernn's owned calls
    # at one BLAS thread plus its own worker) rest at every hand-over between them: a pool
    # spinning after its last call takes the core an owned call's worker needs (hown: 2.3x)
    pool: str = ""
    note: str = ""
    times: list[float] = field(default_factory=list)  # single interleaved calls (s)
    block_times: list[float] = field(default_factory=list)  # per-step means of blocks (s)
    block_cpu: list[float] = field(default_factory=list)  # their process CPU per step (s)
    setup: Callable[[], object] | None = None  # run untimed before each timed call or block


@functools.cache
def tapernn_factories() -> dict[str, tuple[Callable, int]] | str:
    """name -> (module factory, gate count for FLOPs), or why tapernn's nn cannot be used.
    Cached: the factories key the Sequencer cache, so later tables find the timed modules."""
    try:
        from tapernn import nn
    except ImportError as exc:
        return f"{NOT_AVAILABLE} ({exc})"
    wanted = {
        "FastLSTM": ("FastLSTM", {}, 4),
        "LSTM(peephole=False)": ("LSTM", {"peephole": False}, 4),
        "LSTM": ("LSTM", {}, 4),
        "GRU": ("GRU", {}, 3),
    }
    factories = {}
    for label, (cls_name, kwargs, gates) in wanted.items():
        cls = getattr(nn, cls_name, None)
        if cls is None or not hasattr(nn, "Sequencer"):
            factories[label] = (None, gates)
        else:
            factories[label] = ((lambda D, H, cls=cls, kw=kwargs: cls(D, H, **kw)), gates)
    return factories


def pool_of(c: Contender) -> str:
    """The thread regime `c` runs in: "peer", "numpy" (NumPy's BLAS pool) or its `pool`."""
    return c.pool or ("peer" if c.peer else "numpy")


def _sides(runnable: list[Contender], first: str) -> list[list[Contender]]:
    """`runnable` grouped by pool_of, the group of `first` first, the others in order seen."""
    keys = [first] + [k for k in dict.fromkeys(pool_of(c) for c in runnable) if k != first]
    sides = [[c for c in runnable if pool_of(c) == k] for k in keys]
    return [s for s in sides if s]


def _rest(first: Contender) -> None:
    """Let the other library's BLAS workers stop spinning, then pay the cold-cache call untimed."""
    time.sleep(PEER_REST_S)
    if first.setup is not None:
        first.setup()
    first.step()


def _timed(contender: Contender) -> float:
    if contender.setup is not None:
        contender.setup()
    start = time.perf_counter()
    contender.step()
    return time.perf_counter() - start


def time_blocks(contenders: list[Contender], budget_s: float) -> None:
    """What a training loop sees: each contender's steps run in blocks of N back to back (N
    sized so a block lasts ~BLOCK_S by its first call's time), timed as a whole (the block's
    mean per step in `block_times`); blocks alternate between contenders in rounds, each
    library's contenders together and in rotating order, the sides' order alternating, so
    each round hands over between libraries once, after a rest (their BLAS/OpenMP workers
    spin after a call). `block_cpu`: the process's CPU time per step of each block (all its
    threads: a busy machine's preemption does not count, another library's workers do). Each
    block starts with one untimed call: the call after another contender's runs with cold
    caches (3-10x a loop step on a shared VM; `time_interleaved` measures those single
    calls)."""
    runnable = [c for c in contenders if c.step is not None]
    if not runnable:
        return
    steps = {}
    for c in runnable:  # (the first call's time sizes the block; it may be a cold call)
        n = int(BLOCK_S / max(_timed(c), 1e-9))
        steps[id(c)] = min(BLOCK_MAX_STEPS, max(BLOCK_MIN_STEPS, n))
    previous = pool_of(runnable[-1])  # (the side the sizing ended on goes first)
    sides = _sides(runnable, previous)
    round_s = len(runnable) * BLOCK_S + PEER_REST_S * (len(sides) - 1)
    rounds = int(min(BLOCK_MAX_ROUNDS, max(BLOCK_MIN_ROUNDS, budget_s / round_s)))
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            shift = r % len(side)
            for c in side[shift:] + side[:shift]:
                if pool_of(c) != previous:
                    time.sleep(PEER_REST_S)
                previous = pool_of(c)
                n, step = steps[id(c)], c.step
                if c.setup is not None:
                    c.setup()
                step()  # (untimed: the hand-over's cold call)
                start, cpu = time.perf_counter(), time.process_time()
                for _ in range(n):
                    step()
                c.block_times.append((time.perf_counter() - start) / n)
                c.block_cpu.append((time.process_time() - cpu) / n)


def warm_up(contenders: list[Contender]) -> float:
    """Run each contender twice (the first call may compile); disable the ones that fail; on up
    to numba's packed call (backends.kernel_calls: its packed step GEMMs run from there); then,
    once numba's background compiles are done, once more (kernels that became ready while the
    contenders ran take over at their next call: a split loop's step loops are not waited for).
    Returns the summed time of one round, to size the repetitions."""
    from ...backends import kernel_calls, wait_for_kernels

    total = 0.0
    for c in contenders:
        if c.step is None:
            continue
        try:
            if c.setup is not None:
                c.setup()
            c.step()
            total += _timed(c)
        except Exception as exc:  # noqa: BLE001 (a half-written contender must not sink the table)
            c.step, c.note = None, f"error: {type(exc).__name__}: {exc}"[:70]
    for c in contenders:
        for _ in range(kernel_calls() - 2):
            if c.step is not None:
                c.step()
    wait_for_kernels()
    for c in contenders:
        if c.step is not None:
            c.step()
    return total


def time_interleaved(
    contenders: list[Contender],
    budget_s: float,
    min_reps: int = 7,
    max_reps: int = 200,
    progress: bool = False,
    desc: str = "",
) -> None:
    """Repetition r runs every contender once before repetition r+1 starts, so drifts in machine
    load hit all of them alike; the order rotates so no contender always runs first after a
    rest; medians then discard the outliers. A peer library runs in PEER_BLOCKS blocks of
    repetitions alternating with NumPy's, with one rest at each hand-over (resting before every
    repetition cost 100 s of silence); `progress` shows a tqdm bar, one tick per timed run."""
    from tqdm import tqdm

    round_s = warm_up(contenders)
    reps = int(min(max_reps, max(min_reps, budget_s / max(round_s, 1e-9))))
    runnable = [c for c in contenders if c.step is not None]
    previous_pool = pool_of(runnable[-1]) if runnable else ""  # the last one warm_up ran
    # the side warm_up ended on goes first: no hand-over before the first block
    sides = _sides(runnable, previous_pool)
    blocks = min(PEER_BLOCKS, reps) if len(sides) > 1 else 1
    done = [0] * len(sides)
    with tqdm(
        total=reps * len(runnable), desc=desc, disable=not progress, leave=False, unit="run"
    ) as bar:
        for b in range(blocks):
            n = reps * (b + 1) // blocks - reps * b // blocks
            for k in range(len(sides)) if b % 2 == 0 else reversed(range(len(sides))):
                side = sides[k]
                if pool_of(side[0]) != previous_pool:
                    _rest(side[0])
                    previous_pool = pool_of(side[0])
                for r in range(done[k], done[k] + n):
                    shift = r % len(side)
                    for c in side[shift:] + side[:shift]:
                        c.times.append(_timed(c))
                        bar.update()
                done[k] += n
