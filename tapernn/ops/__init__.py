"""The op set: the registry (`registry.py`, the bottom layer) and one module per family
(elementwise, reduce, shape, linalg, nn, fused), each registering its ops when imported.

The families write their VJPs with `tapernn.functional`, so they sit above it (ARCHITECTURE.md);
`tapernn/__init__` imports them. This package itself only re-exports the registry.
"""

from .registry import REGISTRY, OpDef, get_op, register

__all__ = ["REGISTRY", "OpDef", "get_op", "register"]
