"""What a researcher comparing compilation strategies toggles, one thing at a time: every
PlanOptions field set away from its default, every entry of passes.DEFAULT left out (and no
passes at all), rolled and unroll=True, on the numpy or numba backend -- each run on a stacked,
masked model (cell.mask_zero() and nn.MaskZero), with lengths=, remember, weight changes between
calls and need_grad_input on and off, against tests/fast_fuzz.py's oracles (NumPy equations,
complex-step gradients; float64 to 1e-12). Used by tests/test_option_sweep.py and
tools/sweep_options.py."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import fast_fuzz
import numpy as np
from fast_fuzz import Call, FastCase, Layer, run_case

from tapernn import passes as P
from tapernn.passes.driver import pass_name

TOGGLES = [
    {},
    {"regions": False},
    {"strided_min_bytes": 0, "strided_min_run": 1},
    {"escaping_min_run": 1},
    {"kernel_min_uses": 1, "kernel_min_size": 1},
    {"inline_sigmoid": False},
    {"xs_in_slab": False},
    {"dz_in_gates": False},
    {"layout": "feature"},
    {"layout": "batch"},
    {"packed_gemm": False},
    {"grad_into_min_bytes": 0},
    {"tap_room_min_bytes": 0},
    {"grad_input_tail_min_bytes": 0},
    {"batch_split": "on"},
    {"batch_split": "off"},
    {"own_threads": "on"},
    {"own_threads": "off"},
    {"step_loops": False},
    {"step_direct": False},
    {"bias_in_gemm": False},
    {"gemm_in_slab": False},
]


def dropped() -> list[tuple[str, list]]:
    """(what was left out, the pass list): each DEFAULT entry in turn, then every pass."""
    out = []
    for k, p in enumerate(P.DEFAULT):
        out.append((f"{k}:{pass_name(p)}", list(P.DEFAULT[:k]) + list(P.DEFAULT[k + 1 :])))
    return out + [("every pass", [])]


def cases(H: int = 8, B: int = 3) -> dict[str, FastCase]:
    """Two models: FastLSTM(mask_zero) -> MaskZero(GRU), remembered; LSTM(mask_zero)."""
    zeros = [(1, 0), (0, 1), (2, 1), (3, 2), (1, 2)]
    calls = [
        Call(4, [4, 2, 3] + [4] * (B - 3), True, True, False, 0.0, zeros),
        Call(4, None, True, False, False, 0.01, zeros),
        Call(5, [5, 1, 5] + [3] * (B - 3), False, True, False, 0.01, zeros),
        Call(4, None, True, False, True, 0.0, zeros),
    ]
    two = [Layer("FastLSTM", 3, H), Layer("GRU", H, H)]
    return {
        "stacked masked": FastCase(7, two, B, np.float64, {}, True, calls, ["cell", "module"]),
        "lstm masked": FastCase(
            8, [Layer("LSTM", 5, H)], B, np.float64, {}, False, calls, ["cell"]
        ),
    }


@contextlib.contextmanager
def built_with(unroll: bool | None, passes: list | None):
    """fast_fuzz.build, the Sequencer then given `unroll` and `passes` (None: as built)."""
    build = fast_fuzz.build

    def with_them(case):
        m, cells = build(case)
        m.unroll = unroll
        if passes is not None:
            m.set_passes(passes)
        return m, cells

    fast_fuzz.build = with_them
    try:
        yield
    finally:
        fast_fuzz.build = build


def run(case: FastCase, backend: str, options: dict, unroll=None, passes=None) -> dict:
    """run_case of `case` on `backend` with `options`, rolled (None) or unroll=True, `passes`."""
    with built_with(unroll, passes):
        return run_case(replace(case, options={**options, "backend": backend}))
