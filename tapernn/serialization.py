"""Saving and loading parameters as .npz (plain arrays keyed by dotted names; never pickle)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import StateError


def save(module: Any, path: str | os.PathLike) -> None:
    """Write `module.state_dict()` to `path` (.npz)."""
    np.savez(path, **module.state_dict())


def load_into(module: Any, path: str | os.PathLike) -> Any:
    """Load parameters saved by `save` into `module` (names and shapes must match)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise StateError(f"cannot read parameters from {os.fspath(path)!r}: {e}") from None
    return module.load_state_dict(state)
