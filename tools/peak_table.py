"""The steady training loop's peak per cell and backend (issue 19): tracemalloc
(`loop_peak_bytes`, the bench's loop: zero_grad, forward, backward, update) over the BPTT
minimum T*B*5H*itemsize, with the compile report's number next to it.

    python tools/peak_table.py --H 256 512 --dtype float32
    python tools/peak_table.py --H 256 --dtype float64 --cells GRU

Each measured model follows a throw-away model of the same cell and options run for one step
in the same process, so the measured one is never charged for what the process's first
compiles leave behind (hsplitlend: ~0.013U on the first model of a process)."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")

import numpy as np

import tapernn as tn
from tapernn import nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step

CELLS = {
    "FastLSTM": lambda H: nn.FastLSTM(H, H),
    "LSTM": lambda H: nn.LSTM(H, H),
    "LSTM(peephole=False)": lambda H: nn.LSTM(H, H, peephole=False),
    "GRU": lambda H: nn.GRU(H, H),
}
BACKENDS = {
    "numba default": {"backend": "numba"},
    "numba unowned": {"backend": "numba", "own_threads": "off", "batch_split": "off"},
    "numpy": {"backend": "numpy"},
}


def model(cell: str, H: int, dtype: str, opts: dict, seed: int = 0):
    tn.manual_seed(seed)
    seq = nn.Sequencer(CELLS[cell](H)).astype(dtype)
    return seq.set_plan_options(tn.PlanOptions(**opts))


def row(cell: str, H: int, dtype: str, backend: str, T: int, B: int, ngi: bool) -> tuple:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    throw = model(cell, H, dtype, BACKENDS[backend])
    tapernn_loop_step(throw, x, g, need_grad_input=not ngi)()
    del throw
    seq = model(cell, H, dtype, BACKENDS[backend])
    real = loop_peak_bytes(tapernn_loop_step(seq, x, g, need_grad_input=not ngi), 3, 3)
    rep = seq.compile_report().peak_bytes
    return real, rep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--H", type=int, nargs="+", default=[256, 512])
    p.add_argument("--TB", default="50,32")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    p.add_argument("--no-grad-input", action="store_true")
    a = p.parse_args()
    T, B = (int(v) for v in a.TB.split(","))
    for H in a.H:
        unit = T * B * H * np.dtype(a.dtype).itemsize
        for cell in a.cells:
            for backend in a.backends:
                real, rep = row(cell, H, a.dtype, backend, T, B, a.no_grad_input)
                print(
                    f"{cell:<21} H={H:<4} {a.dtype} {backend:<14}"
                    f"{' ngi=False' if a.no_grad_input else ''} real {real / unit:.3f}U "
                    f"= {real / (5 * unit):.4f}x min, report {rep / unit:.3f}U "
                    f"({rep / real:.3f}x real)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
