"""The `fused` op: a group of elementwise ops run as one node. attrs["program"] is a tuple of
instructions (op, refs, attrs, shape, dtype); a ref k >= 0 names the node's k-th input, -(j+1)
the result of instruction j; the last instruction's result is the node's value. The executor
inlines the program with preallocated temporaries; `forward` here interprets it."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .registry import get_op, register


def temp_slots(program: tuple) -> tuple[list[int | None], list[tuple[tuple, np.dtype]]]:
    """Per instruction the temporary it writes (None: the last one writes the node's output),
    reusing a temporary whose value dies at that instruction (elementwise: exact aliasing)."""
    last: dict[int, int] = {}
    for j, (_, refs, _, _, _) in enumerate(program):
        for r in refs:
            if r < 0:
                last[-r - 1] = j
    slot_of: list[int | None] = []
    slots: list[tuple[tuple, np.dtype]] = []
    for j, (_, refs, _, shape, dtype) in enumerate(program):
        if j == len(program) - 1:
            slot_of.append(None)
            break
        # add_n adds its inputs one by one into out: only its first input may share out
        aliasable = refs[:1] if program[j][0] == "add_n" else refs
        reuse = next(
            (
                slot_of[-r - 1]
                for r in aliasable
                if r < 0
                and last[-r - 1] == j
                and slots[slot_of[-r - 1]] == (tuple(shape), np.dtype(dtype))
            ),
            None,
        )
        if reuse is None:
            slots.append((tuple(shape), np.dtype(dtype)))
            reuse = len(slots) - 1
        slot_of.append(reuse)
    return slot_of, slots


def _forward(*xs, program, out=None):
    values: list = []
    for j, (op, refs, attrs, shape, dtype) in enumerate(program):
        args = [xs[r] if r >= 0 else values[-r - 1] for r in refs]
        last = j == len(program) - 1
        values.append(get_op(op).forward(*args, **dict(attrs), **({"out": out} if last else {})))
    return values[-1]


def _shape(*shapes, program):
    if not program:
        raise ShapeError("fused: empty program")
    return tuple(program[-1][3])


def _inplace_rule(node) -> tuple[int, ...]:
    # only the last instruction writes the output, after every other has read its inputs
    op, refs = node.attrs["program"][-1][:2]
    late = set(refs[2:]) if op == "add_n" else set()  # add_n reads these after writing out
    return tuple(
        k
        for k, i in enumerate(node.inputs)
        if i.shape == node.shape and i.dtype == node.dtype and k not in late
    )


register(
    "fused",
    forward=_forward,
    shape=_shape,
    vjp=None,
    differentiable=False,
    dtype=lambda *dtypes, program: np.dtype(program[-1][4]),
    inplace_rule=_inplace_rule,
    internal=True,
)
