"""Routing for long sequences: a node outside the step clusters (a parameter, a summed weight
gradient) that touches many steps gets a "bus" — one chain of junction points, one per step —
instead of one long edge per step. Long edges cost dot a virtual node per rank they cross, which
made a T=100 diagram quadratic; a bus keeps every edge within one step boundary.
"""

from __future__ import annotations

from itertools import pairwise

BUS_MIN_STEPS = 4  # below this, direct edges read better and cost nothing
Edge = tuple[str, str, dict]


def route_buses(
    edges: list[Edge], cluster_of: dict[str, int | None]
) -> tuple[list[Edge], dict[int, list[tuple[str, dict]]]]:
    """Rewrite fan-outs/fan-ins between an outside node and >= BUS_MIN_STEPS steps as buses.

    Returns the new edge list and, per step, the junction points to draw inside that step.
    """
    fans: dict[tuple[str, str, str], list[int]] = {}
    for k, (u, v, attrs) in enumerate(edges):
        cu, cv = cluster_of.get(u), cluster_of.get(v)
        if cu is None and cv is not None and u in cluster_of:
            fans.setdefault((u, "out", _style_key(attrs)), []).append(k)
        elif cv is None and cu is not None and v in cluster_of:
            fans.setdefault((v, "in", _style_key(attrs)), []).append(k)
    replaced: set[int] = set()
    out: list[Edge] = []
    points: dict[int, list[tuple[str, dict]]] = {}
    lanes: dict[tuple[str, str], int] = {}
    for (hub, way, _), ks in fans.items():
        steps = sorted({cluster_of[edges[k][1] if way == "out" else edges[k][0]] for k in ks})
        if len(steps) < BUS_MIN_STEPS:
            continue
        replaced.update(ks)
        # one hub may need several buses (e.g. a forward and a greyed context style): number them
        lane = lanes[(hub, way)] = lanes.get((hub, way), -1) + 1
        name = f"{way}{lane}" if lane else way
        out.extend(_bus(hub, name, [edges[k] for k in ks], steps, cluster_of, points, way))
    kept = [e for k, e in enumerate(edges) if k not in replaced]
    return kept + out, points


def _style_key(attrs: dict) -> str:
    return repr(sorted((k, v) for k, v in attrs.items() if k not in ("label",)))


def _bus(
    hub: str,
    name: str,
    edges: list[Edge],
    steps: list[int],
    cluster_of: dict,
    points: dict[int, list[tuple[str, dict]]],
    way: str,
) -> list[Edge]:
    style = {
        k: v for k, v in edges[0][2].items() if k not in ("label", "dir", "weight", "constraint")
    }
    backwards = edges[0][2].get("dir") == "back"
    line = dict(style, dir="none", weight="0")
    junction = {
        "shape": "point",
        "width": "0.04",
        "color": style.get("color", "#555555"),
        "label": "",
    }
    ids = {t: f"bus_{hub}_{name}_{t}" for t in steps}
    for t in steps:
        points.setdefault(t, []).append((ids[t], junction))
    chain = [ids[t] for t in steps]
    out: list[Edge] = []
    # the arrow stays where the data arrives: at the hub for sums into it, at the users otherwise
    end = dict(style, dir="back" if backwards else "forward")
    if way == "out":
        out.append((hub, chain[0], end if backwards else line))
        out.extend((a, b, line) for a, b in pairwise(chain))
        for u, v, _ in edges:
            out.append((ids[cluster_of[v]], v, line if backwards else end))
    else:
        out.extend((a, b, line) for a, b in pairwise(chain))
        out.append((chain[-1], hub, line if backwards else end))
        for u, v, _ in edges:
            out.append((u, ids[cluster_of[u]], end if backwards else line))
    return out
