"""The step loops' own dispatchers of the fused-group kernels they call (backends/step_loop.py)."""

from __future__ import annotations

import sys
from typing import Any

_callees: dict[tuple, Any] = {}  # (module, name) -> the step loops' own dispatcher of it


def callee(module: str, name: str) -> Any:
    """The step loops' own dispatcher of the cached kernel `name` of `module` (a fused group's,
    loaded): the same function and options, compiled (or loaded from numba's cache) for the
    types a step loop's typing asks for. Not the group's dispatcher itself: a 2-D group's is
    closed to new signatures once its one is compiled (numba_backend.Kernel), so a step loop
    of another dtype than the groups' first failed to type (TypingError: its halves ran in
    Python), and opening that dispatcher during the step loop's compile raced with the
    program's own calls of it. Used only while a step-loop module is typed (StepLoop.prepare,
    under _lock)."""
    key = (module, name)
    own = _callees.get(key)
    if own is None:
        disp = getattr(sys.modules[module], name)
        own = type(disp)(
            py_func=disp.py_func, locals=dict(disp.locals), targetoptions=dict(disp.targetoptions)
        )
        own.enable_caching()  # (the kernel cache's modules: numba's cache files beside them)
        _callees[key] = own
    return own
