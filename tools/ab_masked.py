"""hmask: what a training step with `lengths=` (a masked loop) costs on the numba backend against
the same step without, and against torch's packed sequences. ONE process per config, the arms
interleaved round-robin (tools/ab_common.interleaved: wall, process CPU, the caller's thread
CPU a step). BENCHMARKS.md "hmask".

Arms, per cell (FastLSTM, GRU): "plain" (no lengths), "all" (lengths all T: the masked loop,
every row full), "mix" (a realistic mix: lengths drawn uniformly from [T/2, T], seeded), and
with --noslab "mix-noslab" (the mix with PlanOptions(xs_in_slab=False): the input projection
in a buffer of its own). torch float32 (unless --no-torch): nn.LSTM / nn.GRU on the padded
batch ("torch") and on pack_padded_sequence of the mix ("torch-pack", enforce_sorted=False).

Run: PYTHONPATH=$PWD python tools/ab_masked.py [--configs 32,50,256 32,50,512]
[--cells FastLSTM GRU] [--reps 12] [--batch 3] [--dtype float32] [--noslab] [--no-torch]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from ab_common import interleaved, print_arms

import tapernn as tn
from tapernn import nn

TORCH = {"FastLSTM": "LSTM", "GRU": "GRU"}


def tapernn_step(cell: str, H: int, x, g, lengths, options: dict):
    tn.manual_seed(0)
    seq = nn.Sequencer(getattr(nn, cell)(H, H)).astype(x.dtype)
    seq.set_plan_options(tn.PlanOptions(backend="numba", **options))
    kw = {} if lengths is None else {"lengths": lengths}

    def step() -> None:
        seq.forward(x, **kw)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    return step, seq


def torch_step(cell: str, H: int, x, g, lengths):
    import torch

    rnn = getattr(torch.nn, TORCH[cell])(H, H)
    xt, gt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(g.astype(np.float32))
    pack = torch.nn.utils.rnn.pack_padded_sequence
    unpack = torch.nn.utils.rnn.pad_packed_sequence
    lt = None if lengths is None else torch.from_numpy(np.asarray(lengths, np.int64))

    def step() -> None:
        rnn.zero_grad(set_to_none=True)
        xi = xt.detach().requires_grad_(True)
        if lt is None:
            out, _ = rnn(xi)
        else:
            out, _ = rnn(pack(xi, lt, enforce_sorted=False))
            out, _ = unpack(out, total_length=xt.shape[0])
        out.backward(gt)

    return step


def report_lines(models: dict) -> None:
    for name, seq in models.items():
        lines = [line for line in str(seq.compile_report()).splitlines() if "loop (top)" in line]
        peak = seq.compile_report().peak_bytes
        print(f"  {name}: peak {peak:,}")
        for line in lines:
            print(f"    {line.split(';')[0]} ...{line.split('threads')[-1][:200]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["32,50,256", "32,50,512"], help="B,T,H")
    ap.add_argument("--cells", nargs="+", default=["FastLSTM", "GRU"], choices=list(TORCH))
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--warm", type=int, default=25, help="calls an arm before timing")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--noslab", action="store_true", help="also the mix with xs_in_slab off")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    for config in args.configs:
        B, T, H = (int(v) for v in config.split(","))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(args.dtype)
        g = rng.standard_normal((T, B, H)).astype(args.dtype)
        mix = rng.integers(T // 2, T + 1, B)
        full = np.full(B, T)
        for cell in args.cells:
            arms, models = {}, {}
            cases = {"plain": (None, {}), "all": (full, {}), "mix": (mix, {})}
            if args.noslab:
                cases["mix-noslab"] = (mix, {"xs_in_slab": False})
            for name, (lengths, options) in cases.items():
                arms[name], models[name] = tapernn_step(cell, H, x, g, lengths, options)
            if not args.no_torch:
                arms["torch"] = torch_step(cell, H, x, g, None)
                arms["torch-pack"] = torch_step(cell, H, x, g, mix)
            for f in arms.values():  # (the numba step loops compile in the background)
                for _ in range(args.warm):
                    f()
            res = interleaved(arms, args.reps, args.batch)
            print(
                f"{cell} (B, T, H) = ({B}, {T}, {H}) {args.dtype}; mix lengths {T // 2}..{T}"
                f" (mean {mix.mean():.1f}); load {os.getloadavg()[0]:.1f}"
            )
            print_arms(res, "plain")
            report_lines(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
