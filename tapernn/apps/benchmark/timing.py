"""What the benchmark tables and the pass ablation share: contenders, FLOP counts, interleaved
timing and the tapernn cell factories."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PEER_REST_S = 0.25  # OpenBLAS workers spin ~0.1 s after a call and slow the other library 2-3x
PEER_BLOCKS = 4  # hand-overs between NumPy and a peer library per config, one rest each
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
    note: str = ""
    times: list[float] = field(default_factory=list)


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


def _rest(first: Contender) -> None:
    """Let the other library's BLAS workers stop spinning, then pay the cold-cache call untimed."""
    time.sleep(PEER_REST_S)
    first.step()


def _timed(contender: Contender) -> float:
    start = time.perf_counter()
    contender.step()
    return time.perf_counter() - start


def warm_up(contenders: list[Contender]) -> float:
    """Run each contender twice (the first call may compile); disable the ones that fail.
    Returns the summed time of one round, to size the repetitions."""
    total = 0.0
    for c in contenders:
        if c.step is None:
            continue
        try:
            c.step()
            total += _timed(c)
        except Exception as exc:  # noqa: BLE001 (a half-written contender must not sink the table)
            c.step, c.note = None, f"error: {type(exc).__name__}: {exc}"[:70]
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
    previous_peer = runnable[-1].peer if runnable else False  # the last one warm_up ran
    # the side warm_up ended on goes first: no hand-over before the first block
    sides = [
        s
        for s in (
            [c for c in runnable if c.peer == previous_peer],
            [c for c in runnable if c.peer != previous_peer],
        )
        if s
    ]
    blocks = min(PEER_BLOCKS, reps) if len(sides) > 1 else 1
    done = [0] * len(sides)
    with tqdm(
        total=reps * len(runnable), desc=desc, disable=not progress, leave=False, unit="run"
    ) as bar:
        for b in range(blocks):
            n = reps * (b + 1) // blocks - reps * b // blocks
            for k in range(len(sides)) if b % 2 == 0 else reversed(range(len(sides))):
                side = sides[k]
                if side[0].peer != previous_peer:
                    _rest(side[0])
                    previous_peer = side[0].peer
                for r in range(done[k], done[k] + n):
                    shift = r % len(side)
                    for c in side[shift:] + side[:shift]:
                        c.times.append(_timed(c))
                        bar.update()
                done[k] += n
