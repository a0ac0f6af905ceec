"""The IR's index keys (getitem/index_grad attrs): ("s", start, stop, step) for a slice,
("a", ids) for an integer array, ints, None and Ellipsis as they are; their NumPy form, shape
rule and printed form. Used by the shape ops, `functional.getitem` and the diagrams."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError


def to_numpy_index(key: tuple) -> tuple:
    out = []
    for item in key:
        if isinstance(item, tuple) and item[0] == "s":
            out.append(slice(*item[1:]))
        elif isinstance(item, tuple) and item[0] == "a":
            out.append(np.asarray(item[1], dtype=np.intp))
        else:
            out.append(item)
    return tuple(out)


def is_advanced(key: tuple) -> bool:
    return any(isinstance(i, tuple) and i[0] == "a" for i in key)


_INDEX_SHAPES: dict[tuple, tuple] = {}
_PLAIN_ITEMS = (tuple, int, type(None), type(Ellipsis))


def index_shape(x, index, **_):
    key = known = None
    # pure in (shape, index), and every step slices alike; items are keys as they are unless
    # equal-but-different (True == 1 indexes otherwise) or unhashable
    if all(type(item) in _PLAIN_ITEMS for item in index):
        try:
            key = (tuple(x), index)
            known = _INDEX_SHAPES.get(key)
        except TypeError:
            key = None
    if known is not None:
        return known
    probe = np.broadcast_to(np.empty((), dtype=np.int8), x)  # no memory: strides are zero
    try:
        shape = probe[to_numpy_index(index)].shape
    except IndexError as e:
        raise ShapeError(f"index {show_index(index)} does not fit shape {x}: {e}") from None
    if key is not None and len(_INDEX_SHAPES) < 100_000:
        _INDEX_SHAPES[key] = shape
    return shape


def show_index(key: tuple) -> str:
    """An index key as Python would write it: `[:, 4:8]`."""
    parts = []
    for item in key:
        if isinstance(item, tuple) and item[0] == "s":
            a, b, c = item[1:]
            parts.append(
                f"{'' if a is None else a}:{'' if b is None else b}"
                + ("" if c is None else f":{c}")
            )
        elif isinstance(item, tuple):
            parts.append(str(list(item[1])))
        else:
            parts.append("..." if item is Ellipsis else str(item))
    return "[" + ", ".join(parts) + "]"
