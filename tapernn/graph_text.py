"""Text of the graph IR: one line per node (`Graph.__str__`, diagram tooltips) and attribute
values as plain data (`Graph.to_networkx`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .graph import Node


def printable_attrs(attrs: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
            for k, v in attrs.items()}


def format_attrs(attrs: dict) -> str:
    items = [f"{k}={_short(v)}" for k, v in attrs.items() if k != "kind"]
    return "[" + ", ".join(items) + "]" if items else ""


def _short(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array{v.shape}"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def format_node(n: Node, num: dict[Node, int]) -> str:
    """One line: `%5 = tanh %3  (2, 4) float64  step=1 scope=seq.lstm [bwd]`."""
    if n.op == "input":
        rhs = f"input {n.attrs.get('kind', 'data')}:{n.name}"
    elif n.op == "constant":
        v = n.value
        rhs = f"constant {v.item()!r}" if v is not None and v.size == 1 else "constant"
    else:
        args = " ".join(f"%{num[i]}" if i in num else f"?{i.op}" for i in n.inputs)
        rhs = f"{n.op}{format_attrs(n.attrs)} {args}".rstrip()
    tags = []
    if n.step is not None:
        tags.append(f"step={n.step}")
    if n.scope:
        tags.append(f"scope={n.scope}")
    if n.phase != "forward":
        tags.append("bwd")
    shape = "(" + ", ".join(map(str, n.shape)) + ("," if len(n.shape) == 1 else "") + ")"
    return f"%{num[n]} = {rhs}  {shape} {n.dtype}  {' '.join(tags)}".rstrip()
