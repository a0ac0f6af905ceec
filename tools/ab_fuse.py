"""A/B of branch hfuse (issue 19): "new" (PlanOptions.step_direct on, the default: the translated
step loops' gate kernels write straight into the saved slab row, no concatenate copies) against
"old" (step_direct=False), tapernn numba models with otherwise default options, and torch
nn.LSTM f32 -- one process, interleaved rounds with a rest before each arm (tools/ab_loop.py's
rounds and table), gradients of old and new compared bit for bit.

Run: PYTHONPATH=$PWD python tools/ab_fuse.py --configs 32,50,256 32,50,512 --reps 15
     (--cell LSTM | GRU, --dtype float64)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import nn


def tn_step(B, T, H, dtype, x, g, mode, cell="FastLSTM"):
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(getattr(nn, cell)(H, H)).astype(dtype)
    seq.set_plan_options(tn.PlanOptions(step_direct=mode == "new"))

    def step():
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    return step, seq


def main():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ab_loop  # (its rounds, rests and table: only the arms' steps are this file's)

    ab_loop.main(tn_step)


if __name__ == "__main__":
    main()
