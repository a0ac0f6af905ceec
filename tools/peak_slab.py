"""The steady training loop's peak (tracemalloc) and the compile report's, with
PlanOptions.gemm_in_slab on and off (issue 19, branch hgemm3: the packed projection's panels in
the loop slab's unwritten bytes must not raise it), in U = T*B*H*itemsize; the BPTT minimum is 5U.

Run: PYTHONPATH=$PWD python tools/peak_slab.py --shape 50,32,256 --cells FastLSTM LSTM GRU
"""

from __future__ import annotations

import argparse

import numpy as np

import tapernn as tn
from tapernn import nn, own_room
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="50,32,256", help="T,B,H")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--cells", nargs="*", default=["FastLSTM", "LSTM", "GRU"])
    p.add_argument("--one", default="", help="(internal) cell,on: one arm in this process")
    a = p.parse_args()
    if not a.one:  # each arm in a fresh process (a loop's peak depends on what ran before it)
        import subprocess
        import sys

        for cell in a.cells:
            for on in ("0", "1"):
                argv = [sys.executable, __file__, "--shape", a.shape, "--dtype", a.dtype]
                subprocess.run([*argv, "--one", f"{cell},{on}"], check=True)
        return
    T, B, H = (int(v) for v in a.shape.split(","))
    tn.set_backend("numba")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(a.dtype)
    g = rng.standard_normal((T, B, H)).astype(a.dtype)
    unit = float(T * B * H * np.dtype(a.dtype).itemsize)
    cell, flag = a.one.split(",")
    on = flag == "1"
    tn.manual_seed(0)
    seq = nn.Sequencer(getattr(nn, cell)(H, H)).astype(a.dtype)
    seq.set_plan_options(tn.PlanOptions(gemm_in_slab=on))
    ran = own_room.RAN[0]
    peak = loop_peak_bytes(tapernn_loop_step(seq, x, g))
    report = seq.compile_report().peak_bytes
    print(
        f"({T},{B},{H}) {a.dtype} {cell:9s} gemm_in_slab={on!s:5s}: loop peak"
        f" {peak / unit:.3f}U ({peak / unit / 5:.3f}x the BPTT minimum), report"
        f" {report / unit:.3f}U ({(report / peak - 1) * 100:+.1f} %), packed projections"
        f" run {own_room.RAN[0] - ran}",
        flush=True,
    )


if __name__ == "__main__":
    main()
