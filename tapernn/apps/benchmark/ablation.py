"""The pass ablation of `tools/bench.py --ablation`: one Sequencer cell compiled with DEFAULT, with
each pass removed in turn, without parameter blocks, and unrolled (issue 16's rolled-vs-unrolled
row: `unroll=True`, every step traced), timed interleaved; time, kernels per call and planned
bytes."""

from __future__ import annotations

import statistics

import numpy as np

from ...nn import Sequencer
from ...nn.packing import unpack_parameters
from .timing import Contender, lstm_flops, tapernn_factories, time_interleaved


def pass_variants() -> list[tuple] | str:
    """(label, pass list, parameter blocks on[, unroll]): tapernn.passes.DEFAULT, DEFAULT with
    each pass removed in turn, DEFAULT over unpacked parameters (nn.packing), and DEFAULT on
    the unrolled program (Sequencer unroll=True: the loop not rolled)."""
    try:
        from tapernn import passes
    except ImportError as exc:
        return f"not available ({exc})"
    default = list(passes.DEFAULT)
    variants = [(f"DEFAULT ({len(default)} passes)", default, True)]
    names = [getattr(p, "__name__", repr(p)) for p in default]
    for i, name in enumerate(names):
        label = f"- {name}" + (f" @{i}" if names.count(name) > 1 else "")  # which CSE entry
        variants.append((label, default[:i] + default[i + 1 :], True))
    variants.append(("- parameter blocks", default, False))
    variants.append(("- rolled loops (unroll=True)", default, True, True))
    return variants


def ablation(
    variants: list[tuple],
    B: int,
    T: int,
    H: int,
    dtype,
    budget: float,
    cell: str = "FastLSTM",
) -> None:
    """Time Sequencer(cell) compiled with each pass list; print kernels and planned bytes."""
    try:
        factory = tapernn_factories()[cell][0]
        if factory is None:
            raise ImportError(f"nn.{cell} missing")
        seqs = [
            Sequencer(factory(H, H), unroll=(v[3:] or (None,))[0]).astype(dtype) for v in variants
        ]
        if not all(hasattr(s, "set_passes") and hasattr(s, "compile_report") for s in seqs):
            raise AttributeError("Sequencer has no set_passes/compile_report")
    except (ImportError, AttributeError) as exc:
        print(f"  ablation not available ({exc})")
        return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    grad_h = rng.standard_normal((T, B, H)).astype(dtype)
    contenders = []
    for (label, pass_list, packed, *_), seq in zip(variants, seqs):
        seq.set_passes(list(pass_list))
        if not packed:
            unpack_parameters(seq)

        def step(seq=seq) -> None:
            seq.forward(x)
            seq.zero_grad_parameters()
            seq.backward(x, grad_h)

        contenders.append(Contender(label, step, lstm_flops(B, T, H, H)))
    time_interleaved(contenders, budget)
    print(f"  {'pass list':<44} {'median ms':>10} {'kernels':>8} {'planned MiB':>12}")
    for c, seq in zip(contenders, seqs):
        if not c.times:
            print(f"  {c.name:<44} {c.note}")
            continue
        rep = seq.compile_report()
        kernels = getattr(rep, "kernels", "?")
        planned = getattr(rep, "planned_bytes", None)
        planned_s = f"{planned / 2**20:.2f}" if isinstance(planned, (int, float)) else "?"
        print(
            f"  {c.name:<44} {statistics.median(c.times) * 1e3:>10.3f} {kernels!s:>8} "
            f"{planned_s:>12}"
        )


def run_ablation(configs, dtypes, budget: float, cell: str = "FastLSTM") -> None:
    print(f"\nPass ablation, Sequencer({cell}):")
    variants = pass_variants()
    if isinstance(variants, str):
        print(f"  ablation {variants}")
        return
    for dtype in dtypes:
        for B, T, H in configs:
            print(f" (B={B}, T={T}, D=H={H}) {np.dtype(dtype).name}:")
            ablation(variants, B, T, H, dtype, budget, cell)
