"""Hashable keys of attribute values: what common-subexpression elimination and the grouping
passes compare (`Node.attrs_key` caches a node's). Optimisation tier: the kernel never compares."""

from __future__ import annotations

from typing import Any

import numpy as np

_SIMPLE = (int, float, str, bool, type(None), np.dtype)


def freeze(v: Any) -> Any:
    """A hashable stand-in for an attribute value (for CSE keys)."""
    if isinstance(v, dict):
        return tuple(sorted((k, freeze(x)) for k, x in v.items())) if v else ()
    if isinstance(v, tuple):
        for x in v:  # the usual attrs (axes, shapes, slices of ints) are their own key
            if not isinstance(x, _SIMPLE):
                return tuple(freeze(x) for x in v)
        return v
    if isinstance(v, list):
        return tuple(freeze(x) for x in v)
    if isinstance(v, np.ndarray):
        return ("nd", v.dtype.str, v.shape, v.tobytes())
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)
