"""Torch7's `backward(input, grad_output)` takes the input again. Given another input than the
last forward's (same shapes and dtypes), backward returns the gradient *at that input*: the
forward is recomputed with the last forward's dropout masks and initial states, and `output`
is left alone. For Linear this is exactly Torch7 (gradWeight += grad_outputᵀ·input)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeError
from .tree import flatten


def record_for_input(record: Any, input: Any, module: Any, as_array: Callable) -> Any:
    """`record` (one forward call) if `input` is its input, else a copy reading `input`."""
    given = flatten(input)[0]
    old = record.leaves
    if len(given) > len(old):
        raise ShapeError(
            f"{module.describe()}: backward got {len(given)} input arrays, the last "
            f"forward had {len(old)}; call forward(input) first"
        )
    leaves = list(old)
    for k, a in enumerate(given):
        if a is old[k]:
            continue
        arr = as_array(a, module)
        if arr.shape != old[k].shape:
            raise ShapeError(
                f"{module.describe()}: backward input has shape {arr.shape} but the "
                f"last forward's had {old[k].shape}; call forward(input) first"
            )
        if arr.dtype != old[k].dtype:
            raise DTypeError(
                f"{module.describe()}: backward input has dtype {arr.dtype} but the "
                f"last forward's had {old[k].dtype}; call forward(input) first"
            )
        if not np.array_equal(arr, old[k]):
            leaves[k] = arr
    if all(a is b for a, b in zip(leaves, old)):
        return record
    new = copy.copy(record)
    new.leaves = leaves
    new.args = leaves[: record.exe.n_data] + list(record.args[record.exe.n_data :])
    new.saved = None  # recomputed from the new arguments
    return new
