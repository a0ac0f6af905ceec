"""Speed of compiling and running, not semantics: Python's cyclic GC paused while compiling, and
the NumPy error state a program runs in entered without np.errstate's per-call cost (moved out
of executor.py as they were)."""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import numpy as np


@contextlib.contextmanager
def gc_paused():
    """Run the body with Python's cyclic garbage collector off (restored after, also on errors).

    Compiling allocates hundreds of thousands of small objects that stay alive until the end
    (nodes, tuples, dicts), and each full collection walks all of them: with it on, collections
    took ~0.2 s of a T=100 LSTM's ~1.4 s compile, and grew faster than T. Compile-time
    garbage is freed by reference counting; anything cyclic is collected at the next run after.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _quiet(err: dict) -> dict:
    """NumPy's error settings with "warn" turned off: a user's np.errstate(...="raise") still
    raises (and the failure names the node), the default warnings do not leak."""
    return {k: ("ignore" if v == "warn" else v) for k, v in err.items()}


try:  # np.errstate costs ~5 us per call to build: keep the quiet state of the last seen one
    from numpy._core._ufunc_config import _extobj_contextvar, _make_extobj

    _last_quiet: tuple = (None, None)

    def quiet_enter() -> Any:
        global _last_quiet
        current = _extobj_contextvar.get()
        seen, quiet = _last_quiet
        if current is not seen:
            quiet = _make_extobj(**_quiet(np.geterr()))
            _last_quiet = (current, quiet)
        return _extobj_contextvar.set(quiet)

    def quiet_exit(token: Any) -> None:
        _extobj_contextvar.reset(token)

    _state_now = _extobj_contextvar.get
except (ImportError, TypeError):  # another NumPy layout: the public (slower) way

    def quiet_enter() -> Any:
        state = np.errstate(**_quiet(np.geterr()))
        state.__enter__()
        return state

    def quiet_exit(token: Any) -> None:
        token.__exit__(None, None, None)

    def _state_now() -> Any:
        return None


_last_asked: tuple = (None, False)


def errors_asked() -> bool:
    """Whether NumPy's error state asks more than "ignore" or "warn" of some float error (a
    user's np.errstate(invalid="raise"), "print", "call", "log": a program keeps those,
    `quiet_enter`): then NumPy's own calls must run, not a library called past NumPy whose
    float flags nothing checks (blas_gemm, blas_twin) -- so the error raises, naming the op."""
    global _last_asked
    current = _state_now()
    seen, asked = _last_asked
    if current is None or current is not seen:
        asked = any(v not in ("ignore", "warn") for v in np.geterr().values())
        _last_asked = (current, asked)
    return asked
