"""Where a steady training loop's peak is (issues 16 and 19): per cell, rolled and unroll=True,
the terms of `TrainingPair.step_peak_bytes` in U = T*B*H*itemsize, the moment that is the peak,
and each program's preallocated buffers (which node owns them). The terms are the compile
report's model of the loop; tests/test_memory_loop.py keeps it within 10 % of tracemalloc.

    python tools/peak_terms.py --shape 50,32,256 --cells FastLSTM LSTM GRU
    python tools/peak_terms.py --shape 50,32,256 --measure     # adds the tracemalloc peak
    python tools/peak_terms.py --no-grad-input    # issue 19's loop: backward(need_grad_input=False)
    python tools/peak_terms.py --lengths --backend numba   # forward(x, lengths=...): masked loops

Moments (the Runtime's lifetimes, nn/runtime.py): `forward` = arena + masks + the forward's
per-call peak (its outputs and saved values); `backward` = arena + masks + kept outputs + saved
values not kept + the backward's per-call peak; `after` = arena + masks + kept outputs +
grad_input + the get_grad_hidden_state copies and the update's temporary. A rolled program's
kept outputs are views of the whole forward slab (gate rows too), so `after` holds the slab."""

from __future__ import annotations

import argparse

import numpy as np

from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.nn.runtime import runtime_of
from tapernn.nn.state_grads import tap_copy_bytes
from tapernn.nn.training_pair import _storages, per_call_peak

CELLS = {
    "FastLSTM": lambda H: nn.FastLSTM(H, H),
    "LSTM": lambda H: nn.LSTM(H, H),
    "LSTM(peephole=False)": lambda H: nn.LSTM(H, H, peephole=False),
    "GRU": lambda H: nn.GRU(H, H),
}


def buffers(compiled, unit: float) -> str:
    """The program's buffers, largest first: size in U and the op and shape of a node in it."""
    plan = compiled.program.plan
    owner: dict[int, str] = {}
    for n, b in plan.buffer_of.items():
        owner.setdefault(b, f"{n.op}{tuple(n.shape)}")
    sizes = sorted(
        ((s * d.itemsize, owner.get(b, "scratch")) for b, (s, d) in enumerate(plan.buffers)),
        reverse=True,
    )
    return ", ".join(f"{nb / unit:.2f}U {what}" for nb, what in sizes if nb >= 0.01 * unit)


def buffers_bytes(fwd, bwd, unit: float) -> str:
    """The forward's and backward's planned buffer bytes, in U (the arena is the larger)."""
    return " / ".join(f"{c.program.plan.buffer_bytes / unit:.2f}U" for c in (fwd, bwd))


def loop_step(seq, x: np.ndarray, g: np.ndarray, need_dx: bool, lengths=None):
    """tapernn_loop_step, or with `lengths` the same step over forward(x, lengths=...)."""
    if lengths is None:
        return tapernn_loop_step(seq, x, g, need_grad_input=need_dx)

    def step() -> None:
        seq.zero_grad_parameters()
        seq.forward(x, lengths=lengths)
        seq.backward(x, g, need_grad_input=need_dx)
        seq.update_parameters(1e-3)

    return step


def terms(
    seq, x: np.ndarray, g: np.ndarray, unit: float, need_dx: bool = True, lengths=None
) -> dict:
    seq.forward(x) if lengths is None else seq.forward(x, lengths=lengths)
    seq.backward(x, g, need_grad_input=need_dx)
    exe = runtime_of(seq).history[-1].exe
    pair = exe.compile_training()
    fwd, bwd = pair.forward, pair.last_backward
    n_kept = len(fwd.graph.outputs) - pair.n_saved
    kept = _storages(fwd, range(n_kept))
    saved = _storages(fwd, range(n_kept, len(fwd.graph.outputs)))
    saved_only = sum(b for k, b in saved.items() if k not in kept)
    arena = pair.arena.nbytes if pair.arena is not None else fwd.report.arena_bytes
    masks = sum(n.nbytes for n in fwd.graph.inputs if n.kind == "random")
    base = arena + masks
    kept_b = sum(kept.values())
    grad_input = sum(_storages(bwd, range(len(exe.data_wrt))).values()) if need_dx else 0
    taps = tap_copy_bytes(exe) + exe._update_bytes()
    n_dx = len(exe.data_wrt) if need_dx else 0
    into = range(n_dx, n_dx + exe.packing.n_grads)  # (into the zeroed .grad: compute_into)
    moments = {
        "forward": base + per_call_peak(fwd, scratch=True),
        "backward": base + kept_b + saved_only + per_call_peak(bwd, into),
        "after": base + kept_b + grad_input + taps,
    }
    return {
        "buffers": buffers_bytes(fwd, bwd, unit),
        "arena": arena / unit,
        "kept": kept_b / unit,
        "saved only": saved_only / unit,
        "fwd per-call": per_call_peak(fwd, scratch=True) / unit,
        "bwd per-call": per_call_peak(bwd, into) / unit,
        "grad_input": grad_input / unit,
        "taps+update": taps / unit,
        **{k: v / unit for k, v in moments.items()},
        "peak at": max(moments, key=moments.get),
        "report": seq.compile_report().peak_bytes / unit,
        "dZ in gates": bool(pair.donate) and bool(bwd.program.plan.donated),
        "tap room": pair.tap_room(bwd),
        "fwd buffers": buffers(fwd, unit),
        "bwd buffers": buffers(bwd, unit),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="50,32,256", help="T,B,H (D = H)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--cells", nargs="*", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--measure", action="store_true", help="also the tracemalloc loop peak")
    p.add_argument(
        "--no-grad-input",
        action="store_true",
        help="the loop's backward without the input gradient (need_grad_input=False: the "
        "backward variant, compiled into the module's arena after the pair)",
    )
    p.add_argument(
        "--no-dz-in-gates",
        action="store_true",
        help="PlanOptions(dz_in_gates=False) (the default plans dZ over the saved gate rows)",
    )
    p.add_argument("--backend", default="auto", help="PlanOptions.backend (numpy, numba, auto)")
    p.add_argument(
        "--lengths",
        action="store_true",
        help="forward(x, lengths=...) (masked loops; lengths drawn in [T/2, T])",
    )
    a = p.parse_args()
    T, B, H = (int(v) for v in a.shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(a.dtype)
    g = rng.standard_normal((T, B, H)).astype(a.dtype)
    lengths = rng.integers(T // 2, T + 1, B) if a.lengths else None
    unit = float(T * B * H * np.dtype(a.dtype).itemsize)
    print(f"(T, B, H) = ({T}, {B}, {H}) {a.dtype}, U = {unit / 2**20:.4f} MiB, BPTT minimum 5U")
    for cell in a.cells:
        for unroll in (False, True):
            options = PlanOptions(dz_in_gates=not a.no_dz_in_gates, backend=a.backend)
            seq = nn.Sequencer(CELLS[cell](H), unroll=unroll).astype(a.dtype)
            need_dx = not a.no_grad_input
            t = terms(seq.set_plan_options(options), x, g, unit, need_dx, lengths)
            name = f"{cell} {'unroll=True' if unroll else 'rolled'}"
            if a.measure:
                fresh = nn.Sequencer(CELLS[cell](H), unroll=unroll).astype(a.dtype)
                fresh.set_plan_options(options)
                step = loop_step(fresh, x, g, need_dx, lengths)
                t["tracemalloc"] = loop_peak_bytes(step) / unit
                t["real/report"] = f"{t['tracemalloc'] / t['report']:.3f}"
            print(f"{name}:")
            for k, v in t.items():
                print(f"    {k:<13} {v:.2f}U" if isinstance(v, float) else f"    {k:<13} {v}")


if __name__ == "__main__":
    main()
