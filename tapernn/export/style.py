"""How diagrams look: one attribute set per node role and edge kind, and the label text.

Colours follow one rule a reader can learn from a single diagram: blue = data in, gold =
parameters, green = recurrent state, red = gradients (dashed = backward), grey = context.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..graph import Node
from ..ops.indexing import show_index

FONT = "Helvetica"
GRAPH_ATTRS = {
    "rankdir": "LR",
    "fontname": FONT,
    "fontsize": "12",
    "nodesep": "0.18",
    "ranksep": "0.3",
    "compound": "true",
}
NODE_ATTRS = {
    "fontname": FONT,
    "fontsize": "10",
    "shape": "box",
    "style": "rounded,filled",
    "fillcolor": "white",
    "color": "#444444",
    "margin": "0.06,0.03",
    "height": "0.3",
}
EDGE_ATTRS = {"fontname": FONT, "fontsize": "8", "color": "#555555", "arrowsize": "0.6"}

ROLE_ATTRS: dict[str, dict[str, str]] = {
    "data": {"shape": "ellipse", "style": "filled", "fillcolor": "#cfe2ff"},
    "state": {"shape": "ellipse", "style": "filled", "fillcolor": "#d1f2d6"},
    "param": {"shape": "box", "style": "filled", "fillcolor": "#ffe8a3", "color": "#a07800"},
    "seed": {
        "shape": "ellipse",
        "style": "filled,dashed",
        "fillcolor": "#ffd6d6",
        "color": "#b00020",
    },
    "constant": {"shape": "plaintext", "style": "", "fontcolor": "#666666", "height": "0.2"},
    "op": {},
    "output": {"style": "rounded,filled,bold", "fillcolor": "#cfe2ff", "penwidth": "2"},
    "backward": {"style": "rounded,filled,dashed", "fillcolor": "#fff0f0", "color": "#b00020"},
    "gradient": {
        "style": "rounded,filled,bold",
        "fillcolor": "#ffd6d6",
        "color": "#b00020",
        "penwidth": "2",
    },
    "context": {
        "style": "rounded,filled",
        "fillcolor": "#f2f2f2",
        "color": "#aaaaaa",
        "fontcolor": "#888888",
    },
    "fused": {"shape": "box", "style": "filled", "fillcolor": "#e8ddff", "color": "#5b3fa0"},
}

EDGE_KIND_ATTRS: dict[str, dict[str, str]] = {
    "plain": {},
    "param": {"color": "#d9b84a", "arrowsize": "0.4", "penwidth": "0.7", "constraint": "false"},
    "recurrent": {"color": "#1a7f37", "penwidth": "2.4", "weight": "8"},
    "backward": {"color": "#b00020", "style": "dashed"},
    "recurrent_backward": {"color": "#b00020", "style": "dashed", "penwidth": "2.4", "weight": "8"},
    "context": {
        "color": "#c8c8c8",
        "style": "dotted",
        "constraint": "false",
        "penwidth": "0.6",
        "arrowhead": "none",
    },
}

CLUSTER_ATTRS = {
    "style": "rounded,filled",
    "fillcolor": "#fafafa",
    "color": "#999999",
    "fontname": FONT,
    "fontsize": "12",
    "labeljust": "l",
    "margin": "10",
}


def shape_text(shape: tuple) -> str:
    """(2, 4) -> "2×4"; () -> "scalar"."""
    return "×".join(map(str, shape)) if shape else "scalar"


def node_label(n: Node, output: str | None = None) -> str:
    """Op (with scalar constants and telling attrs) over shape; graph outputs lead with their name."""
    text = _plain_label(n)
    return f"{output}\n{text}" if output and n.op != "input" else text


def _plain_label(n: Node) -> str:
    if n.op == "input":
        return f"{n.name}\n{shape_text(n.shape)}"
    if n.op == "constant":
        v = n.value
        if v is not None and v.size == 1:
            return _number(v.reshape(()).item())
        return f"const\n{shape_text(n.shape)}"
    ops = fused_ops(n)
    if ops:
        return "fused: " + " → ".join(ops) + f"\n{shape_text(n.shape)}"
    return f"{n.op}{_constant_args(n)}{_attr_hint(n)}\n{shape_text(n.shape)}"


def _constant_args(n: Node) -> str:
    """Scalar constants are not drawn as nodes; "sub(1, ·)" shows where they enter the op."""
    if not any(_is_scalar(i) for i in n.inputs):
        return ""
    args = [_number(i.value.reshape(()).item()) if _is_scalar(i) else "·" for i in n.inputs]
    return f"({', '.join(args)})"


def _is_scalar(n: Node) -> bool:
    return n.op == "constant" and n.value is not None and n.value.size == 1


def fused_ops(n: Node) -> list[str]:
    """The op names inside a fused node, however the compiler records them (defensive)."""
    program = n.attrs.get("program")  # the compiler's fused node: (op, ...) instructions
    if n.op == "fused" and isinstance(program, (list, tuple)) and program:
        return [ins[0] if isinstance(ins, (list, tuple)) else str(ins) for ins in program]
    for key in ("ops", "fused_ops", "members"):
        ops = n.attrs.get(key)
        if isinstance(ops, (list, tuple)) and ops:
            return [o if isinstance(o, str) else getattr(o, "op", str(o)) for o in ops]
    body = n.attrs.get("graph") or n.attrs.get("body") or n.attrs.get("subgraph")
    nodes = getattr(body, "nodes", None)
    if nodes:
        return [m.op for m in nodes if m.op not in ("input", "constant")]
    return []


def _attr_hint(n: Node) -> str:
    # a few attrs change what an op means on a slide (which axis, which slice); show those only
    if n.op == "transpose" and tuple(n.attrs.get("axes") or ()) == tuple(range(n.ndim))[::-1]:
        return "ᵀ" if n.ndim == 2 else ""
    if "index" in n.attrs:  # shown the way it was written: [2], [:, 4:8]
        text = show_index(n.attrs["index"])
        return f" {text if len(text) <= 18 else text[:16] + '…]'}"
    for key in ("axis", "axes"):
        value = n.attrs.get(key)
        if value is not None:
            if isinstance(value, tuple) and len(value) == 1:
                value = value[0]
            text = f"{key}={value}"
            return f" [{text if len(text) <= 16 else text[:14] + '…'}]"
    return ""


def _number(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    return str(v)


def role_attrs(role: str) -> dict[str, str]:
    return dict(ROLE_ATTRS.get(role, {}))


_TEXTS = ("label", "tooltip", "xlabel", "headlabel", "taillabel")


def escaped(attrs: dict[str, Any]) -> dict[str, Any]:
    """`attrs` with their texts drawn as written (graphviz.escape): a backslash in a parameter
    or module name is not a Graphviz escape ("w\\n" was drawn "w" over an empty line, "a\\lb" as
    "a" over "b"), nor is a text in <...> an HTML label. (Our own labels use no escapes: line
    breaks are newline characters.)"""
    import graphviz

    return {
        k: graphviz.escape(v) if k in _TEXTS and isinstance(v, str) else v for k, v in attrs.items()
    }
