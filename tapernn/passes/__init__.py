"""The compiler's pass pipeline: `DEFAULT` is a plain list read top to bottom; a pass is any
`Graph -> Graph` function. `tn.set_default_passes` replaces the list used by `tn.compile`.
"""
from __future__ import annotations

from .driver import CompileReport, Pass, PassRecord, run_passes

DEFAULT: list[Pass] = []

_default: list[Pass] | None = None


def default_passes() -> list[Pass]:
    return list(DEFAULT if _default is None else _default)


def set_default_passes(passes: list[Pass] | None) -> None:
    """Use `passes` wherever no pipeline is given (None restores `DEFAULT`)."""
    global _default
    _default = None if passes is None else list(passes)


__all__ = ["DEFAULT", "CompileReport", "Pass", "PassRecord", "run_passes", "default_passes",
           "set_default_passes"]
