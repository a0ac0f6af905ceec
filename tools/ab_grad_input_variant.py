"""Issue 19 A/B in one process: the need_grad_input=False backward variant with its gate-fused
weight-gradient GEMMs ordered by the concat their results go to (now) against the old order
(tape order: `passes.gates._destinations` stubbed out while the "before" models compile). Per
cell: the steady loop's tracemalloc peak (forward, backward without dX, update) in U = T*B*H*
itemsize and in multiples of the BPTT minimum 5U, the module arena's arrays, the transposed
concats left in the variant, and the variant's backward and whole-step times (medians of
interleaved rounds).

    python tools/ab_grad_input_variant.py --shape 50,32,256 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tapernn from this checkout

import numpy as np

import tapernn as tn
from tapernn import nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.passes import gates

CELLS = {
    "FastLSTM": lambda H: nn.FastLSTM(H, H),
    "LSTM": lambda H: nn.LSTM(H, H),
    "GRU": lambda H: nn.GRU(H, H),
}


@contextmanager
def old_order(on: bool):
    real = gates._destinations
    if on:
        gates._destinations = lambda graph, pos: {}
    try:
        yield
    finally:
        gates._destinations = real


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="50,32,256", help="T,B,H (D = H)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--cells", nargs="*", default=list(CELLS), choices=list(CELLS))
    a = p.parse_args()
    T, B, H = (int(v) for v in a.shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(a.dtype)
    g = rng.standard_normal((T, B, H)).astype(a.dtype)
    unit = float(T * B * H * np.dtype(a.dtype).itemsize)
    print(
        f"(T, B, H) = ({T}, {B}, {H}) {a.dtype}, U = {unit / 2**20:.4f} MiB, backend "
        f"{tn.get_backend()}, load {os.getloadavg()}"
    )
    for cell in a.cells:
        seqs = {}
        for label, before in (("before", True), ("after", False)):
            tn.manual_seed(0)
            seq = nn.Sequencer(CELLS[cell](H)).astype(a.dtype)
            with old_order(before):
                peak = loop_peak_bytes(tapernn_loop_step(seq, x, g, need_grad_input=False))
            pair = seq._runtime.last.training_pair
            lean = pair.last_backward.graph
            transposed = sum(
                n.op == "transpose" and n.inputs[0].op == "concat" and n.ndim == 2
                for n in lean.nodes
            )
            arrays = [round(arr.nbytes / unit, 2) for arr in pair.arena.given]
            print(
                f"{cell} {label}: loop peak {peak / unit:.2f}U = {peak / unit / 5:.2f}x the BPTT "
                f"minimum; arena arrays {arrays} U (total with loop bodies "
                f"{pair.arena.nbytes / unit:.2f}U); transposed concats in the variant "
                f"{transposed}"
            )
            seqs[label] = seq
        times: dict[str, dict[str, list[float]]] = {k: {"bwd": [], "step": []} for k in seqs}
        for r in range(a.rounds):
            for label in ("before", "after") if r % 2 == 0 else ("after", "before"):
                seq = seqs[label]
                bwd = step = 0.0
                for _ in range(a.steps):
                    t0 = time.perf_counter()
                    seq.zero_grad_parameters()
                    seq.forward(x)
                    t1 = time.perf_counter()
                    seq.backward(x, g, need_grad_input=False)
                    t2 = time.perf_counter()
                    seq.update_parameters(1e-3)
                    t3 = time.perf_counter()
                    bwd += t2 - t1
                    step += t3 - t0
                times[label]["bwd"].append(bwd / a.steps * 1e3)
                times[label]["step"].append(step / a.steps * 1e3)
        for what in ("bwd", "step"):
            b = statistics.median(times["before"][what])
            n = statistics.median(times["after"][what])
            print(
                f"  {what:<4} ms  before {', '.join(f'{v:.1f}' for v in times['before'][what])}"
                f" (median {b:.1f});  after {', '.join(f'{v:.1f}' for v in times['after'][what])}"
                f" (median {n:.1f});  after/before {n / b:.2f}"
            )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
