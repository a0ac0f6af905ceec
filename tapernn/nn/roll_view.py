"""The unrolled view of a rolled program: what `module.graph`, `tn.render(model)`, printing and
`tapernn graph` show (one sub-graph per step, as before issue 16), traced on demand with every
loop unrolled, from the same signature and starting states as the rolled program."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autodiff import grad
from ..executor import gc_paused
from ..graph import Graph


def trace_starts(exe: Any, root: Any) -> None:
    """Remember what the view must trace like: the modules' starts, as zero-byte stand-ins of
    the same shapes (holding the arrays would keep the last call's output buffers alive)."""
    exe.view_starts = [
        (m, _stand_in(m._state), _stand_in(m._user_initial))
        for m in root.modules()
        if hasattr(m, "_user_initial")
    ]


def _stand_in(state: Any) -> Any:
    if state is None:
        return None
    return tuple(np.broadcast_to(np.zeros((), a.dtype), a.shape) for a in state)


def unrolled_view(rt: Any, exe: Any) -> Any:
    """`exe` traced again with every loop unrolled (cached on it); not compiled."""
    view = getattr(exe, "view", None)
    if view is not None:
        return view
    root = rt.module
    tree, names, n_diff, passes = exe.trace_args
    leaves = [np.broadcast_to(np.zeros((), s[1]), s[0]) for s in exe.key[1]]
    now = [(m, m._state, m._user_initial) for m, _, _ in exe.view_starts]
    try:
        for m, state, user in exe.view_starts:
            m._state, m._user_initial = state, user
        with gc_paused():
            view = type(exe)(
                root,
                leaves,
                tree,
                names,
                exe.key[2],
                exe.history_mode,
                n_diff,
                passes,
                exe.options,
                unroll=True,
            )
    finally:
        for m, state, user in now:
            m._state, m._user_initial = state, user
    exe.view = view
    return view


def view_graph(rt: Any, exe: Any) -> Graph:
    """The display graph of a rolled program: the unrolled forward, and after a training
    forward its gradients too (as `Runtime.last_graph` shows an unrolled program)."""
    view = unrolled_view(rt, exe)
    if exe.training_pair is None:
        return view.display
    joint = getattr(view, "view_joint", None)
    if joint is None:
        g = Graph(view.graph.nodes, view.graph.inputs, view.diff_outputs, view.graph.meta)
        j = grad(g, wrt=view.wrt, seeds="inputs")
        joint = view.view_joint = Graph(
            j.nodes, j.inputs, view.real + j.outputs[len(view.diff_outputs) :], j.meta
        )
    return joint


def view_executable(rt: Any, exe: Any) -> Any:
    """What diagrams of the compiled program draw for a rolled `exe`: its unrolled view,
    compiled as `exe` was (training pair or forward only)."""
    view = unrolled_view(rt, exe)
    if exe.training_pair is not None:
        view.compile_training()
    else:
        view.compile_forward()
    return view
