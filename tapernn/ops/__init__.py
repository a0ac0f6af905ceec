"""The op set: the registry and one module per family (elementwise, reduce, shape, linalg, nn).

Families register on import; `tapernn/__init__` imports them once tracing exists (their VJPs are
written with the symbolic functions).
"""
from .registry import REGISTRY, OpDef, get_op, register

FAMILIES = ("elementwise", "reduce", "shape", "linalg", "nn", "fused")


def load_families() -> None:
    import importlib

    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")


__all__ = ["REGISTRY", "OpDef", "get_op", "register", "load_families"]
