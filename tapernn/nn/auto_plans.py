"""The "auto" backend's two plans for a signature with a loop too large for a numba loop kernel
(a step value of MIN_ELEMENTS or more). auto_choice lowers such a program on NumPy (or, with a
small loop beside it -- a Sequencer(Linear) after the LSTM -- on numba from call 1000, its large
loops planned as for NumPy), yet numba's plan
(packed step GEMMs, step loops, the batch split: a different layout and different graphs, so a
whole second Executable) runs its training step ~1.5x faster at (32, 50, 256) f32 and its
evaluation forward ~2.6x (BENCHMARKS.md, "hauto2"). So the signature's NumPy-planned Executable
runs its first forwards (training and evaluation are signatures of their own); at the START-th
the model is traced and compiled once more with PlanOptions.backend "numba" (its kernels asked
for then, in the background: fused groups, the packed GEMM; made from the compile's end, the
worker held meanwhile -- numba's import and compiles beside the trace stretched it 1.3-2.3x:
background.held, BENCHMARKS.md "htrace"); from the SWITCH-th that Executable
replaces it, its programs' Gates due at their first call (which waits only for the kernels not
ready by then). Call counts, never timings: the same calls run the same plan cold or warm
($TAPERNN_AUTO_PLANS="start,switch" changes them; tests do). A forward's backward always runs
the pair of the forward's Executable (its Record names it).

Counted from the signature's first forward, or, under a layout re-check (nn.layout_recheck),
from its settling: the re-check times NumPy's plan and decides its layout first; the numba plan
takes its own layout rule's choice (packed loops stay batch-major), not re-checked (that would
trace a third Executable). Until the switch the steady path is off (nn.runtime). Step-wise
(history) calls keep the NumPy plan (`made`). From the start call to the switch the Runtime's
one Arena is sized for the larger plan (the report's peak counts it: Executable.report)."""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from dataclasses import replace
from typing import Any

from ..backends import background, call_counts, numba_missing, policy

# a signature's forward at which numba's plan is traced (START) and from which it runs (SWITCH):
# BENCHMARKS.md "hauto2" -- START past a short run's few steps (it never imports numba), SWITCH
# late enough that a cold kernel cache has compiled in the background by then
START, SWITCH = 10, 100
# the fewest elements of some loop's largest stepped value for numba's plan: just above a
# loop kernel's LOOP_MAX_SIZE (4096) numba's step ran 1.03-1.13x NumPy's ((T, B, H) = (3 / 10,
# 8, 144): 4608), from 8192 ((5, 32, 64)) 0.87x and below (BENCHMARKS.md "hauto2")
MIN_ELEMENTS = 8192
_NUMBA = threading.local()  # .on: this thread traces a numba plan (`options`)
_PENDING: weakref.WeakSet = weakref.WeakSet()  # TwoPlans before their switch


def plan_calls() -> tuple[int, int]:
    """(start, switch): $TAPERNN_AUTO_PLANS="start,switch" (1 <= start < switch), else
    (START, SWITCH)."""
    return call_counts("TAPERNN_AUTO_PLANS", (START, SWITCH), apart=True)


def pending() -> bool:
    """Whether a live model's signature has not switched plans yet: from its start call to its
    switch it holds both plans' programs; a measurement of the steady loop steps past it."""
    return len(_PENDING) > 0


def options(given: Any) -> Any:
    """The PlanOptions a trace uses: `given`, with backend "numba" while TwoPlans traces its
    second plan."""
    return replace(given, backend="numba") if getattr(_NUMBA, "on", False) else given


def made(exe: Any, sequence: bool, training: bool) -> TwoPlans | None:
    """A TwoPlans for `exe` (a fresh or re-check-settled Executable; `sequence`: not step-wise;
    `training`: its signature's mode) when it gets a second, numba plan, else None. Step-wise
    calls (history) run one step per call: their graphs have no loop. Some loop's largest
    stepped value holds MIN_ELEMENTS or more (small loops beside it too: a transducer's
    Sequencer(Linear) step ran 106 ms a step on "auto"'s one plan after its switch vs numba's
    plan's 67 at (50, 32, 256) f64, load ~10). Evaluation too: numba's forward-only program ran
    2.6x faster at (32, 50, 256) f32 (BENCHMARKS.md "hauto2")."""
    if getattr(_NUMBA, "on", False) or not sequence or exe.recheck is not None:
        return None
    if policy(exe.options.backend) != "auto" or numba_missing():
        return None
    sizes = [_largest(n.attrs) for n in exe.graph.nodes if n.op == "scan"]
    if not sizes or max(sizes) < MIN_ELEMENTS:
        return None
    return TwoPlans(exe, training)


def _largest(attrs: dict) -> int:
    """Elements of a loop body's largest value computed from its carries or xs each step (its
    gates: B x 4H for an LSTM; not a weight's transpose, computed once)."""
    body = attrs["body"]
    stepped = set(body.inputs[: attrs["n_carry"] + attrs["n_xs"]])
    largest = 0
    for b in body.nodes:
        if b.op != "input" and any(i in stepped for i in b.inputs):
            stepped.add(b)
            largest = max(largest, math.prod(b.shape))
    return largest


class TwoPlans:
    """One signature's NumPy-planned Executable (`first`) and, from its start call, its
    numba-planned one (`other`)."""

    def __init__(self, first: Any, training: bool):
        self.first, self.other, self.training = first, None, training
        self.start, self.switch = plan_calls()
        self.calls = 0  # forwards so far
        self.failed: str | None = None  # why numba's plan could not be made
        self.note = (
            f"auto: NumPy's plan until call {self.switch}, numba's plan from call {self.switch}"
            f" (traced at call {self.start}; no loop small enough for a numba loop kernel, but "
            f"numba's packed step GEMMs, step loops and batch split)"
        )
        first.plan_note = self.note
        _PENDING.add(self)

    def executable(self, trace: Any) -> Any:
        """The Executable this forward runs; `trace()` traces the model again."""
        self.calls += 1
        if self.other is None and self.calls >= self.start and self.failed is None:
            if policy(self.first.options.backend) == "numpy":  # (chosen since: set_backend
                self._keep_first("tn.set_backend('numpy') since")  # rules later compiles)
                return self.first
            try:  # (again at the next call after an interrupted one: Ctrl-C propagates)
                with background.held():  # (its kernels made from the end of the compile on)
                    self._compile(trace)
            except Exception as e:  # noqa: BLE001 -- numba's plan alone failed: NumPy's for good
                self._keep_first(f"numba's plan failed: {type(e).__name__}: {e}")
                warnings.warn(f"tapernn: {self.note}", RuntimeWarning, stacklevel=3)
        if self.calls < self.switch or self.other is None:
            return self.first
        self.first.two_plans = None
        _PENDING.discard(self)
        return self.other

    def _keep_first(self, why: str) -> None:
        """This signature keeps NumPy's plan for good, the compile report's note saying `why`:
        numba's plan raised while traced or compiled (its NumPy twin traced fine: a numba
        planning failure, not the model's -- the run goes on with the same numbers), or the
        user chose NumPy since the first call."""
        self.other, self.failed = None, why
        self.note = f"auto: NumPy's plan (at call {self.start}, {why})"
        self.first.plan_note = self.note
        self.first.two_plans = None
        _PENDING.discard(self)

    def _compile(self, trace: Any) -> None:
        """numba's plan traced and compiled (`other`), its kernels asked for."""
        _NUMBA.on = True
        try:
            self.other = trace()
        finally:
            _NUMBA.on = False
        self.other.recheck = None  # (numba's plan keeps its layout rule's choice)
        self.other.plan_note = self.note
        if self.training:  # (its kernels asked for now)
            pair = self.other.compile_training()
            programs = (pair.forward, pair.backward)
        else:
            programs = (self.other.compile_forward(),)
        for program in programs:
            gate = program.__dict__.get("run")
            if gate is not None:
                gate.at = 1  # (its first call -- the switch call -- waits for the kernels)
                gate.packed = None  # (the packed driver's too: asked for now, as they are)
