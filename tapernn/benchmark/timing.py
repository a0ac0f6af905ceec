"""What the benchmark tables and the pass ablation share: contenders, FLOP counts, interleaved
timing and the tapernn cell factories."""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PEER_REST_S = 0.25  # OpenBLAS workers spin ~0.1 s after a call and slow the other library 2-3x
NOT_AVAILABLE = "tapernn nn not available"


def lstm_flops(B: int, T: int, D: int, H: int, gates: int = 4) -> float:
    """Training FLOPs: forward 2*T*B*(D+H)*gates*H, backward twice that (dx, dh, dW_x, dW_h)."""
    return 3 * 2.0 * T * B * (D + H) * gates * H


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
    wanted = {"FastLSTM": ("FastLSTM", {}, 4),
              "LSTM(peephole=False)": ("LSTM", {"peephole": False}, 4),
              "LSTM": ("LSTM", {}, 4), "GRU": ("GRU", {}, 3)}
    factories = {}
    for label, (cls_name, kwargs, gates) in wanted.items():
        cls = getattr(nn, cls_name, None)
        if cls is None or not hasattr(nn, "Sequencer"):
            factories[label] = (None, gates)
        else:
            factories[label] = ((lambda D, H, cls=cls, kw=kwargs: cls(D, H, **kw)), gates)
    return factories


def _timed(contender: Contender, rest: bool) -> float:
    if rest:
        time.sleep(PEER_REST_S)
        contender.step()  # untimed: after a sleep the caches are cold and the first call pays
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
            total += _timed(c, rest=False)
        except Exception as exc:  # noqa: BLE001 (a half-written contender must not sink the table)
            c.step, c.note = None, f"error: {type(exc).__name__}: {exc}"[:70]
    return total


def time_interleaved(contenders: list[Contender], budget_s: float, min_reps: int = 7,
                     max_reps: int = 200) -> None:
    """Repetition r runs every contender once before repetition r+1 starts, so drifts in machine
    load hit all of them alike; the order rotates so no contender always runs first after a
    rest; medians then discard the outliers. NumPy and a peer library rest when they hand over."""
    round_s = warm_up(contenders)
    reps = int(min(max_reps, max(min_reps, budget_s / max(round_s, 1e-9))))
    runnable = [c for c in contenders if c.step is not None]
    previous_peer = False
    for r in range(reps):
        shift = r % max(len(runnable), 1)
        for c in runnable[shift:] + runnable[:shift]:
            c.times.append(_timed(c, rest=c.peer != previous_peer))
            previous_peer = c.peer
