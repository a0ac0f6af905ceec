"""Turning diagrams into files: `render` (format from the suffix), `render_passes` (one diagram per
compiler stage) and `repr_svg` for Jupyter. Everything but .dot needs the Graphviz `dot` program.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import graphviz

from ..errors import RenderError
from ..fileio import atomic_write
from ..graph import Graph
from .diagram import to_dot
from .source import resolve

FORMATS = (".dot", ".gv", ".svg", ".png", ".pdf")
INSTALL_HINT = (
    "install Graphviz so that `dot` is on PATH: `apt-get install graphviz` "
    "(Debian/Ubuntu), `brew install graphviz` (macOS) or `conda install graphviz`; "
    "or write a .dot file, which needs no Graphviz program"
)
# steps past which an unrolled diagram is one long row that dot lays out slowly (op level, T 20:
# ~1 min; T 200: 7 min at load 15; module level, T 100: 14,642 x 149 pixels)
WIDE = {"op": 16, "module": 64}
LAID_OUT = (".svg", ".png", ".pdf")


class WideDiagramWarning(UserWarning):
    """A laid-out diagram unrolls so many steps that dot may take minutes (tn.render)."""


def wide_note(steps: int, level: str, collapse_hint: str = "collapse=True") -> str | None:
    """What to say before dot lays out `steps` unrolled steps at `level` ("op" / "module"),
    or None when that is quick. The one rule of tn.render and `tapernn graph`."""
    if steps <= WIDE.get(level, WIDE["op"]):
        return None
    return (
        f"{steps} steps unrolled at {level} level make a wide diagram that dot may take "
        f"minutes to lay out; {collapse_hint} draws the step template once"
    )


# Jupyter should stay responsive: beyond this many nodes a notebook shows the collapsed view
REPR_COLLAPSE_NODES = 400


def dot_available() -> bool:
    return shutil.which("dot") is not None


def render(obj: Any, path: str | os.PathLike, **to_dot_kwargs: Any) -> Path:
    """Write a diagram of `obj` to `path`; the suffix picks the format (.dot .svg .png .pdf).

    Shapes: as `to_dot`; keyword arguments are passed to it. Returns the path written.
    Raises RenderError when the format needs the `dot` program and it is missing.
    """
    path = check_target(path)
    suffix = path.suffix.lower()
    if suffix in LAID_OUT and not isinstance(obj, graphviz.Digraph):
        _warn_if_wide(obj, to_dot_kwargs)
    dot = obj if isinstance(obj, graphviz.Digraph) else to_dot(obj, **to_dot_kwargs)
    data = dot.source if suffix in (".dot", ".gv") else pipe(dot, suffix[1:])
    write_whole(path, data)
    return path


def _warn_if_wide(obj: Any, to_dot_kwargs: dict) -> None:
    """A WideDiagramWarning, before any drawing work, when `obj` unrolls too many steps."""
    if to_dot_kwargs.get("collapse"):
        return
    graph, _ = resolve(obj)
    steps = len({n.step for n in graph.nodes if n.step is not None})
    note = wide_note(steps, to_dot_kwargs.get("level", "op"))
    if note is not None:
        warnings.warn(note, WideDiagramWarning, stacklevel=3)


def check_target(path: str | os.PathLike, formats: Sequence[str] = FORMATS) -> Path:
    """`path` as a Path if a diagram may be written there, else RenderError saying why: a known
    suffix (case ignored), not a folder, in a folder that exists. The one rule of `tn.render`,
    `tapernn graph -o` and `tapernn demo --diagram` (checked before any work). A missing folder is
    refused, not created (as tn.save, open() and `dot -o` do): a mistyped folder name would
    otherwise put the diagram where nobody looks. `render_passes` takes a folder and creates it."""
    if not isinstance(path, (str, os.PathLike)):
        raise RenderError(f"expects a file path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise RenderError(
            f"cannot write {str(path)!r}: it is a folder; give a file such as "
            f"{str(path / 'graph.svg')!r}"
        )
    if path.suffix.lower() not in formats:
        raise RenderError(
            f"cannot tell the format of {str(path)!r}: use one of {', '.join(formats)}"
        )
    if not path.parent.is_dir():
        raise RenderError(
            f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist "
            f"(create it first; diagrams are never written into a folder made on the fly)"
        )
    return path


def write_whole(path: Path, data: str | bytes) -> None:
    """Replace `path` by `data` whole or not at all (fileio.atomic_write): an existing file is
    never left truncated by a failed write; RenderError naming the path when it cannot be."""
    try:
        blob = data.encode("utf-8") if isinstance(data, str) else data
        atomic_write(path, lambda f: f.write(blob))
    except (OSError, UnicodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise RenderError(f"cannot write {str(path)!r}: {reason}") from None


def render_or_source(
    obj: Any, path: str | os.PathLike, **to_dot_kwargs: Any
) -> tuple[Path, str | None]:
    """`render`, but where a format needs the missing `dot` program, write the DOT source beside
    it (acceptor.svg -> acceptor.dot) instead of failing. Returns (path written, None) or
    (the .dot path, a note saying how to install Graphviz and render the file)."""
    path = Path(path)
    if (
        path.suffix.lower() in (".dot", ".gv")
        or path.suffix.lower() not in FORMATS
        or dot_available()
    ):
        return render(obj, path, **to_dot_kwargs), None
    source = render(obj, path.with_suffix(".dot"), **to_dot_kwargs)
    fmt = path.suffix.lower().lstrip(".")
    note = (
        f"Graphviz's `dot` program is not on PATH, so this is the diagram's DOT source. "
        f"To draw it, install Graphviz (`apt-get install graphviz`, `brew install graphviz` "
        f"or `conda install graphviz`) and run: dot -T{fmt} {source} -o {path}"
    )
    return source, note


def pipe(dot: graphviz.Digraph, fmt: str) -> bytes:
    """Run `dot -T<fmt>` on the diagram; RenderError (with install instructions) if it is missing."""
    if not dot_available():
        raise RenderError(
            f"rendering {fmt.upper()} needs the Graphviz `dot` program, which is "
            f"not on PATH; {INSTALL_HINT}"
        )
    try:
        return dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise RenderError(f"the Graphviz `dot` program could not be run; {INSTALL_HINT}") from None
    except graphviz.CalledProcessError as e:
        raise RenderError(f"Graphviz `dot` failed on this diagram: {_dot_says(e.stderr)}") from None


def _dot_says(stderr: bytes | str | None) -> str:
    """dot's error in one short line (its stderr can hold thousands of lines of rank dumps)."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else str(stderr or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    said = [ln for ln in lines if not re.fullmatch(r"\S+ \d+", ln)][:3]  # (not "%0 1" dumps)
    line = "; ".join(said) or "no message"
    return (line if len(line) <= 300 else line[:297] + "...") + (
        "; the .dot source (-o x.dot, tn.to_dot) still writes"
    )


def repr_svg(obj: Any, level: str = "op") -> str | None:
    """SVG text for Jupyter, or None when `dot` is missing (Jupyter then falls back to repr).
    Modules show themselves at module level; graphs and compiled programs at op level."""
    if not dot_available():
        return None
    try:
        graph, _ = resolve(obj)
        big = len(graph.nodes) > REPR_COLLAPSE_NODES
        dot = to_dot(
            obj,
            level=level,
            view="forward" if level == "module" else "both",
            collapse=big and level == "op",
        )
        return pipe(dot, "svg").decode("utf-8")
    except RenderError:
        return None


def render_passes(
    graph: Graph | Any,
    folder: str | os.PathLike,
    passes: Sequence | None = None,
    fmt: str = "svg",
    **to_dot_kwargs: Any,
) -> list[Path]:
    """One diagram per compiler stage: `00_input.svg`, `01_<pass>.svg`, ... in `folder`.

    `graph` is a Graph or a module after forward (its traced graph, with BPTT after a backward).
    Runs `passes` (default: the default pipeline) one at a time through the pass driver, so each
    stage is verified; each title shows the node count and its change. Returns the paths written.
    """
    from ..passes import default_passes, run_passes

    graph, _ = resolve(graph)
    passes = default_passes() if passes is None else list(passes)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RenderError(f"cannot create folder {str(folder)!r}: {e.strerror or e}") from None
    width = max(2, len(str(len(passes))))
    paths: list[Path] = []
    sizes: list[int] = []

    def draw(index: int, name: str, stage: Graph) -> None:  # the driver's dump hook
        if index == 0:
            title = f"input: {len(stage.nodes)} nodes"
        else:
            before, delta = sizes[-1], len(stage.nodes) - sizes[-1]
            title = f"after {name}: {before} → {len(stage.nodes)} nodes ({delta:+d})"
        sizes.append(len(stage.nodes))
        paths.append(
            render(
                to_dot(stage, title=title, **to_dot_kwargs),
                folder / f"{index:0{width}d}_{_file_safe(name)}.{fmt}",
            )
        )

    run_passes(graph, passes, dump=draw)
    return paths


def _file_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
