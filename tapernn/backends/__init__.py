"""Which backend lowers fused elementwise groups: "numpy" (ufunc calls with preallocated
temporaries) or "numba" (one @njit loop over memory per group, tapernn/backends/numba_backend.py;
compiled in a background thread while NumPy serves each top-level program's first call -- its
loops' every step too -- backends/background).
`set_backend` chooses for later compiles. The default is numpy: numba is opt-in (set_backend,
$TAPERNN_BACKEND=numba) because its start-up costs more than it saves in the runs the default
was decided on (100 float32 FastLSTM training steps at (1, 5, 5) and (32, 50, 256), first call
included: numba slower at both, warm kernel cache or cold). numba's import and first-use setup
take ~1 s of CPU per process even with every kernel cached (its scipy import avoided,
backends/numba_setup.py), and each kernel specialisation ~0.4-0.8 s of compile the first time (one
per 2-D kernel whatever its arrays' layout; the float32 ones with vecmath's exp/tanh the most),
waited for at a model's second call (the first runs on NumPy while they compile;
$TAPERNN_NUMBA_SWITCH_CALL) -- for steps 0-12 % faster than NumPy's at
(32, 50, 256) and (32, 50, 512) float32 since its float32 exp/tanh/sigmoid vectorise
(backends/vecmath.py; its kernels 1.5-2x NumPy's per group), not enough to win a 100-step run
from process start in CPU time; measured in BENCHMARKS.md."""

from __future__ import annotations

import importlib.util
import os

from ..errors import TapernnError

BACKENDS = ("numpy", "numba")
_chosen: str | None = None


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def default_backend() -> str:
    """$TAPERNN_BACKEND when set, else numpy (numba is opt-in: see the module docstring)."""
    env = os.environ.get("TAPERNN_BACKEND", "")
    if env:
        return check_backend(env, "$TAPERNN_BACKEND")
    return "numpy"


def check_backend(name: str, what: str = "backend") -> str:
    if name not in BACKENDS:
        raise TapernnError(f"{what}: expected one of {BACKENDS}, got {name!r}")
    if name == "numba" and not numba_available():
        raise TapernnError(
            f"{what} 'numba': numba is not installed (pip install 'tapernn[fast]'), use 'numpy'"
        )
    return name


def set_backend(name: str) -> None:
    """Choose the backend of every later `compile` (a compile's `backend=` overrides it)."""
    global _chosen
    _chosen = check_backend(name)


def get_backend() -> str:
    global _chosen
    if _chosen is None:
        _chosen = default_backend()
    return _chosen


def resolve_backend(name: str | None) -> str:
    """A compile option's backend: None or "" means the current one (get_backend)."""
    return check_backend(name) if name else get_backend()


def wait_for_kernels(timeout: float | None = None) -> bool:
    """Block until the numba kernels compiling in the background are ready (True), or `timeout`
    seconds have passed (False). Without numba in use: True at once."""
    import sys

    if "tapernn.backends.background" not in sys.modules:
        return True
    from .background import wait

    return wait(timeout)
