"""Which backend lowers fused elementwise groups: "numpy" (ufunc calls with preallocated
temporaries), "numba" (one @njit loop over memory per group, tapernn/backends/numba_backend.py;
small loops and small whole programs as one @njit function; compiled in a background thread while
NumPy serves each top-level program's calls before its switch call -- backends/background) or
"auto", the default: numba's kernels only where they pay, NumPy everywhere else.

Under "auto" a top-level program with a loop small enough for a numba loop kernel (small_loops)
is lowered for numba but runs NumPy (its loop bodies too) until its AUTO_START-th call; only then
does the worker thread import numba and load or compile its kernels, which take over at its
AUTO_SWITCH-th call (that call waits for those not ready). A program called fewer than AUTO_START
times never imports numba. Every other program is the NumPy backend's -- but a module's input
signature with a larger loop (a step value of 8192 elements or more: nn/auto_plans.py) is traced
a second time for numba's plan at its 10th call and runs it from its 100th. Both are call counts,
never timings, so a run gives the same bits cold or warm and for the same model built twice
($TAPERNN_AUTO_CALLS="start,switch" changes them). Why (BENCHMARKS.md, "numba as the default
backend"): importing and setting up numba costs ~0.45 s of CPU per process, each kernel ~0.3-3 s
of compile the first time on a machine, and numba's steady step saves at most ~0.3 ms -- only
where a loop or a whole program becomes one kernel (3-10x NumPy's step at tutorial sizes; with
fused-group kernels alone 0.85-1.18x) -- so with every program on numba from its second call
`tapernn demo` took 2.1x the CPU warm and 23x cold, a 300-step `tapernn train` 1.1x / 1.3x, and
only runs of thousands of tiny-model steps won. Without numba installed, or without scipy (numba's
matmul calls scipy's BLAS: loop and program kernels would fail), "auto" is "numpy"; the compile
report says which and why (`CompileReport.backend_note`). "numba" puts every program on numba
from its $TAPERNN_NUMBA_SWITCH_CALL-th call (default 2; kernels asked for at compile time), a
loop's packed step GEMMs from its $TAPERNN_NUMBA_PACKED_CALL-th (default PACKED_CALL, 50)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Any

from ..errors import ArgumentError, TapernnError
from ..plan_options import LOOP_MAX_SIZE
from .kernel_cache import (  # noqa: F401 -- public: the kernel cache on disk (README)
    CacheInfo,
    cache_info,
    cache_root,
    clear_cache,
    prune_cache,
)

BACKENDS = ("numpy", "numba", "auto")
# "auto": the top-level call that has the worker start on a program's kernels, and the one
# from which they run (BENCHMARKS.md, "numba as the default backend")
AUTO_START, AUTO_SWITCH = 1000, 2000
_chosen: str | None = None
_missing: list[str] = []  # numba_missing()'s answer, once per process


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def numba_missing() -> str:
    """Why "auto" cannot use numba here ("" when it can): found without importing anything."""
    if not _missing:
        if not numba_available():
            why = "numba is not installed (pip install 'tapernn[fast]')"
        elif importlib.util.find_spec("scipy") is None:
            why = (
                "scipy is not installed: numba's matmul needs its BLAS (pip install "
                "'tapernn[fast]')"
            )
        else:
            why = ""
        _missing.append(why)
    return _missing[0]


def default_backend() -> str:
    """$TAPERNN_BACKEND when set, else "auto" (see the module docstring)."""
    env = os.environ.get("TAPERNN_BACKEND", "")
    if env:
        return check_backend(env, "$TAPERNN_BACKEND")
    return "auto"


def check_backend(name: str, what: str = "backend") -> str:
    if name not in BACKENDS:
        raise ArgumentError(f"{what}: expected one of {BACKENDS}, got {name!r}")
    if name == "numba" and not numba_available():
        raise TapernnError(
            f"{what} 'numba': numba is not installed (pip install 'tapernn[fast]'), use 'numpy' "
            f"or 'auto'"
        )
    return name


def set_backend(name: str) -> None:
    """Choose the backend of every later `compile` (a compile's `backend=` overrides it):
    "numpy", "numba" or "auto" (the default; see the module docstring)."""
    global _chosen
    _chosen = check_backend(name)


def get_backend() -> str:
    """The backend later compiles use: "numpy", "numba" or "auto"."""
    global _chosen
    if _chosen is None:
        _chosen = default_backend()
    return _chosen


def policy(name: str | None) -> str:
    """A compile option's backend as chosen ("numpy" / "numba" / "auto"): None or "" means the
    current one (get_backend)."""
    return check_backend(name) if name else get_backend()


def resolve_backend(name: str | None) -> str:
    """The backend that lowers a program: "numpy" or "numba" ("auto" is numba when
    numba_missing() is "")."""
    chosen = policy(name)
    if chosen == "auto":
        return "numpy" if numba_missing() else "numba"
    return chosen


def auto_calls() -> tuple[int, int]:
    """(start, switch) of the "auto" backend: $TAPERNN_AUTO_CALLS="start,switch", else
    (AUTO_START, AUTO_SWITCH)."""
    return call_counts("TAPERNN_AUTO_CALLS", (AUTO_START, AUTO_SWITCH))


def call_counts(name: str, default: tuple[int, int], apart: bool = False) -> tuple[int, int]:
    """$`name`="start,switch" as two call numbers, 1 <= start <= switch (start < switch when
    `apart`), else `default`; TapernnError if it says anything else."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        start, switch = (int(part) for part in text.split(","))
    except ValueError:
        start, switch = 0, 0
    if not 1 <= start <= switch - apart:
        rule = "<" if apart else "<="
        raise TapernnError(
            f"${name}: expected 'start,switch' with 1 <= start {rule} switch, got {text!r}"
        )
    return start, switch


def small_loops(graph: Any) -> int:
    """How many of `graph`'s loops have bodies small enough for one numba loop kernel
    (LOOP_MAX_SIZE elements per value): where numba's steady step beats NumPy's."""
    count = 0
    for n in graph.nodes:
        if n.op == "scan":
            body = n.attrs["body"]
            if max((math.prod(b.shape) for b in body.nodes), default=0) <= LOOP_MAX_SIZE:
                count += 1
    return count


def auto_choice(graph: Any, options: Any) -> tuple[Any, str]:
    """(options, the report's line on the choice) for a top-level program: under "auto" numba
    when numba can be used and the program has a small loop (small_loops), else NumPy (options'
    backend set to "numpy"). Other backends: (options, "")."""
    if policy(options.backend) != "auto":
        return options, ""
    why = numba_missing()
    if not why and not small_loops(graph):
        why = (
            "no loop small enough for a numba loop kernel (its fused-group kernels alone run "
            "no faster than NumPy's)"
        )
    if why:
        return dataclasses.replace(options, backend="numpy"), f"auto: NumPy, since {why}"
    start, switch = auto_calls()
    note = (
        f"auto: NumPy until call {switch} (numba's kernels asked for at call {start}, run from "
        f"call {switch}; peak bytes: the loop's from then on, numba's plan's -- NumPy's holds "
        'less before: BENCHMARKS.md "hpeak")'
    )
    return options, note


def deferred(name: str | None) -> bool:
    """Whether a numba program's kernels wait for its AUTO_START-th call ("auto" backend)."""
    return policy(name) == "auto"


def kernel_calls() -> int:
    """The top-level call from which a numba program runs all its kernels: the later of its
    switch and packed calls ($TAPERNN_NUMBA_SWITCH_CALL, $TAPERNN_NUMBA_PACKED_CALL) -- a
    steady loop's timing or memory counts the calls after it."""
    from .background import packed_call, switch_call

    return max(switch_call(), packed_call())


def wait_for_kernels(timeout: float | None = None) -> bool:
    """Block until the numba kernels asked for so far are ready (True), or `timeout` seconds
    have passed (False). Without numba in use: True at once. (Under "auto", a program's kernels
    are asked for at its AUTO_START-th call.)"""
    import sys

    if "tapernn.backends.background" not in sys.modules:
        return True
    from .background import wait

    return wait(timeout)
