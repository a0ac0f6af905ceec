"""Diagrams of unrolled graphs: DOT (via the `graphviz` package), SVG/PNG/PDF through the Graphviz
`dot` program, node-link JSON, per-pass diagrams -- and Jupyter's `_repr_svg_` of graphs,
compiled programs and modules, attached here (the core never imports this package).
"""

from __future__ import annotations

from ..errors import RenderError
from ..executor import Compiled
from ..graph import Graph
from ..nn.module import Module
from .diagram import to_dot, to_json
from .rendering import render, render_passes, repr_svg


def _module_svg(module: Module) -> str | None:
    return repr_svg(module, level="module") if module.graph is not None else None


Graph._repr_svg_ = repr_svg
Compiled._repr_svg_ = repr_svg
Module._repr_svg_ = _module_svg

__all__ = ["RenderError", "render", "render_passes", "repr_svg", "to_dot", "to_json"]
