"""PROTOTYPE (branch hauto, not for merge): the "auto" backend with two plans for a training model
whose loops are too large for a numba loop kernel (backends.small_loops), which "auto" leaves on
NumPy although numba's plan (packed step GEMMs, step loops, the batch split) runs its training
step ~1.5x faster at (32, 50, 256) f32. With $TAPERNN_AUTO_PLANS="start,switch" set, such a
signature's NumPy-planned Executable runs its first training forwards as now; at its `start`-th
the model is traced and compiled once more with PlanOptions.backend "numba" (its fused groups'
kernels asked for then, in the background); from its `switch`-th that one replaces it, its
programs' Gates due at their first call (which waits for every kernel not ready). Call counts,
never timings: the same calls run the same plan cold or warm. Until the switch the steady path
is off (nn.runtime), as under a layout re-check."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from ..backends import numba_missing, policy, small_loops
from ..errors import TapernnError


def plan_calls() -> tuple[int, int] | None:
    """$TAPERNN_AUTO_PLANS="start,switch" (1 <= start < switch), else None (off)."""
    text = os.environ.get("TAPERNN_AUTO_PLANS", "")
    if not text:
        return None
    try:
        start, switch = (int(part) for part in text.split(","))
    except ValueError:
        start, switch = 0, 0
    if not 1 <= start < switch:
        raise TapernnError(
            f"$TAPERNN_AUTO_PLANS: expected 'start,switch' with 1 <= start < switch, got {text!r}"
        )
    return start, switch


_NUMBA = [False]  # (set while the numba plan is traced: `options`)


def options(given: Any) -> Any:
    """The PlanOptions a trace uses: `given`, with backend "numba" while TwoPlans traces its
    second plan."""
    return replace(given, backend="numba") if _NUMBA[0] else given


def made(exe: Any, training: bool) -> TwoPlans | None:
    """A TwoPlans for `exe` (a fresh Executable; `training`: of a training call, not step-wise)
    when it gets a second, numba plan, else None."""
    if _NUMBA[0] or not training or plan_calls() is None or exe.recheck is not None:
        return None
    if policy(exe.options.backend) != "auto" or numba_missing():
        return None
    loops = any(n.op == "scan" for n in exe.graph.nodes)
    return TwoPlans(exe) if loops and small_loops(exe.graph) == 0 else None


class TwoPlans:
    """One signature's NumPy-planned Executable (`first`) and, from its start call, its
    numba-planned one (`other`)."""

    def __init__(self, first: Any):
        self.first, self.other = first, None
        self.start, self.switch = plan_calls() or (1, 2)
        self.calls = 0  # training forwards so far

    def executable(self, trace: Any) -> Any:
        """The Executable this training forward runs; `trace()` traces the model again."""
        self.calls += 1
        if self.calls == self.start:
            _NUMBA[0] = True
            try:
                self.other = trace()
            finally:
                _NUMBA[0] = False
            self.other.recheck = None  # (a close layout is not re-checked in the prototype)
            pair = self.other.compile_training()  # (its fused groups' kernels asked for now)
            for program in (pair.forward, pair.backward):
                gate = program.__dict__.get("run")
                if gate is not None:
                    gate.at = 1  # (its first call -- the switch call -- waits for the kernels)
        if self.calls < self.switch:
            return self.first
        self.first.two_plans = None
        return self.other
