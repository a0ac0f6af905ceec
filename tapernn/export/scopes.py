"""Nested clusters by dotted module scope ("seq.lstm" sits inside "seq"), for `cluster_by="scope"`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import graphviz

from .style import CLUSTER_ATTRS, escaped


def cluster_name(scope: str) -> str:
    return "cluster_scope_" + (re.sub(r"[^0-9A-Za-z_]", "_", scope) or "root")


def place_by_scope(
    dot: graphviz.Digraph,
    items: Iterable[Any],
    scope_of: Callable[[Any], str],
    draw: Callable[[graphviz.Digraph, Any], None],
    names: dict[str, str] | None = None,
) -> None:
    """Draw each item inside the nested clusters of its scope; scope "" draws at the top level."""
    tree: dict[str, list[Any]] = {}
    for item in items:
        tree.setdefault(scope_of(item), []).append(item)
    for item in tree.get("", []):
        draw(dot, item)
    scopes = sorted({p for s in tree if s for p in _prefixes(s)})
    _draw_level(dot, "", scopes, tree, draw, names or {})


def _prefixes(scope: str) -> list[str]:
    parts = scope.split(".")
    return [".".join(parts[: k + 1]) for k in range(len(parts))]


def _draw_level(
    parent: graphviz.Digraph,
    prefix: str,
    scopes: list[str],
    tree: dict,
    draw: Callable,
    names: dict[str, str],
) -> None:
    depth = 0 if not prefix else prefix.count(".") + 1
    children = [
        s for s in scopes if s.count(".") == depth and (not prefix or s.startswith(prefix + "."))
    ]
    for s in children:
        with parent.subgraph(name=cluster_name(s)) as c:
            label = f"{names[s]}  ({s})" if s in names else s
            c.attr(**escaped({"label": label}), **CLUSTER_ATTRS)
            for item in tree.get(s, []):
                draw(c, item)
            _draw_level(c, s, scopes, tree, draw, names)
