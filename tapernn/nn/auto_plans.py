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


def wanted(exe: Any) -> bool:
    """Whether `exe` (a fresh training Executable, not step-wise) gets a second, numba plan."""
    return (
        plan_calls() is not None
        and policy(exe.options.backend) == "auto"
        and not numba_missing()
        and exe.recheck is None
        and small_loops(exe.graph) == 0
        and any(n.op == "scan" for n in exe.graph.nodes)
    )


class TwoPlans:
    """One signature's NumPy-planned Executable (`first`) and, from its start call, its
    numba-planned one (`other`)."""

    def __init__(self, first: Any):
        self.first, self.other = first, None
        self.start, self.switch = plan_calls() or (1, 2)
        self.calls = 0  # training forwards so far

    def executable(self, make_other: Any) -> tuple[Any, bool]:
        """(the Executable this training forward runs, whether it is the last to consult
        this); `make_other(backend)` traces the model with PlanOptions.backend `backend`."""
        self.calls += 1
        if self.calls == self.start:
            self.other = make_other("numba")
            self.other.recheck = None  # (a close layout is not re-checked in the prototype)
            pair = self.other.compile_training()  # (its fused groups' kernels asked for now)
            for program in (pair.forward, pair.backward):
                gate = program.__dict__.get("run")
                if gate is not None:
                    gate.at = 1  # (its first call -- the switch call -- waits for the kernels)
        if self.calls < self.switch:
            return self.first, False
        self.first.two_plans = self.other.two_plans = None
        return self.other, True
