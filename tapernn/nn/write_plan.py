"""How a program's outputs become module fields (nn.runtime's write-back): the per-module plan
made once per program from its probes (`write_plan`), and a recurrent module's per-step fields
grouped by step (`by_steps`, `gather`), and a recurrent module's `output` made from them when
read (`LastOutput`)."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from .context import _BUILD
from .rolled import Stacked
from .tree import LEAF


def write_plan(exe: Any) -> list:
    """`exe.probe_plan()` sorted out once per program: per module, its last "output" probe
    (field, tree, start, stop) or None, its single-array field probes (field, step, position),
    and the rest (stacked loop fields, tables) as probe_plan gives them. A call then writes
    the fields without testing each probe (fields go to different lists per name, so the
    order between kinds does not matter; _write_fields orders each by step)."""
    plan = getattr(exe, "_write_plan", None)
    if plan is None:
        plan = []
        for m, items in exe.probe_plan():
            output, leaves, others = None, [], []
            for name, t, tree, pos, stop in items:
                if name == "output" and not isinstance(t, Stacked):
                    output = (name, tree, pos, stop)
                elif tree == LEAF and not isinstance(t, Stacked):
                    leaves.append((name, t, pos))
                else:
                    others.append((name, t, tree, pos, stop))
            plan.append((m, output, leaves, others, by_steps(m, leaves, others)))
        exe._write_plan = plan
    return plan


def release_plan(exe: Any) -> list:
    """Per module whose fields a call of `exe` writes: (module, whether it writes `output`,
    whether it writes a recurrent module's per-step fields): what Runtime._release_previous
    drops before the call. Found once per program."""
    release = getattr(exe, "_release_plan", None)
    if release is None:
        release = exe._release_plan = [
            (
                m,
                output is not None or any(name == "output" for name, *_ in others),
                hasattr(m, "_n_steps")  # a recurrent module's per-step fields
                and bool(leaves or any(name != "output" for name, *_ in others)),
            )
            for m, output, leaves, others, _ in write_plan(exe)  # (each module once)
        ]
    return release


def by_steps(m: Any, leaves: list, others: list) -> tuple | None:
    """(outputs, inputs, [(state name, sources)], n steps), each field's sources in step order as
    _write_fields orders them (see gather), where m's class writes its fields by `_write_steps`
    and every field is single arrays per step or a loop's stacked rows (nn.rolled.Stacked)
    whose steps do not interleave with the field's other sources; else None."""
    if not (leaves or others) or not getattr(type(m)._write_fields, "by_steps", False):
        return None
    fields: dict[str, list] = {}  # name -> [(first step, last step, position, rows)]
    n_outputs = 0  # the steps of the `outputs` field (the module's step count after the call)
    for name, t, pos in leaves:
        if not isinstance(t, int):
            return None
        fields.setdefault(name, []).append((t, t, pos, None))
        n_outputs += name == "outputs"
    for name, at, tree, pos, stop in others:
        if not isinstance(at, Stacked) or tree != LEAF or stop != pos + 1 or at.n < 1:
            return None
        last = at.start + (at.n - 1) * at.stride
        n_outputs += at.n if name == "outputs" else 0
        fields.setdefault(name, []).append((at.start, last, pos, -1 if at.reverse else 1))
    odd = [name for name in fields if name not in ("outputs", "inputs")]
    if any(not name.startswith("state:") or name[6:] not in m.state_names for name in odd):
        return None  # (_write_fields raises on such a field, as it did)
    ordered = {}
    for name, sources in fields.items():
        sources.sort(key=lambda s: s[0])
        if any(a[1] >= b[0] for a, b in pairwise(sources)):
            return None  # interleaved steps: _write_fields sorts them item by item
        if all(rows is None for *_, rows in sources):
            ordered[name] = tuple(pos for _, _, pos, _ in sources)
        else:
            ordered[name] = [(pos, rows) for _, _, pos, rows in sources]
    return (
        ordered.get("outputs", ()),
        ordered.get("inputs", ()),
        [(state, ordered.get("state:" + state, ())) for state in m.state_names],
        n_outputs,
    )


class Pending:
    """A Sequencer call's per-step fields of one recurrent module (`outputs`, `inputs`,
    `states`) before they are split into step rows: nn.recurrent's fields make their lists
    from it when first read (a training loop that never reads them never makes them). `outs`
    is the call's kept outputs (Record.outputs: no saved values), which the call's record and
    fields hold anyway."""

    __slots__ = ("outs", "plan")

    def __init__(self, outs: tuple, plan: tuple):
        self.outs, self.plan = outs, plan  # plan: by_steps's

    __init__.plain = True  # (nn.steady_source sets these fields itself)

    def field(self, name: str) -> Any:
        outs, (outputs, inputs, states, _) = self.outs, self.plan
        if name == "outputs":
            return gather(outs, outputs)
        if name == "inputs":
            return gather(outs, inputs)
        return {state: gather(outs, at) for state, at in states}


def gather(outs: tuple, sources: tuple | list) -> list:
    """A field's values in step order: a tuple of output positions (one array per step), or
    a list of (position, rows): rows None one array, 1 a loop's stacked steps split into row
    views (NumPy's own iteration), -1 the same stacked in reverse (a reverse loop)."""
    if type(sources) is tuple:
        return [outs[k] for k in sources]
    if len(sources) == 1 and sources[0][1] == 1:
        return list(outs[sources[0][0]])
    values: list = []
    for pos, rows in sources:
        if rows is None:
            values.append(outs[pos])
        else:
            values += list(outs[pos] if rows == 1 else outs[pos][::-1])
    return values


class LastOutput:
    """A recurrent module's `output` (Torch7's field): the newest step's output, `outputs[-1]`,
    made when read -- a Sequencer's call, or a container stepped by hand, writes only the
    per-step fields of the modules inside (no cost per call); else the value written (a module
    stepped by itself; a forget() leaves it). On the class (and inside a step's trace, where
    `super().output(*state)` reads it) it is the cell's method `output(*state)` (`fn`), which
    Cell subclasses override."""

    def __init__(self, fn: Any = None):
        self.fn = fn
        self.__doc__ = getattr(fn, "__doc__", None) or LastOutput.__doc__

    def __get__(self, m: Any, owner: Any = None) -> Any:
        if m is None:
            return self.fn
        fields = m.__dict__
        if _BUILD.get() is not None and self.fn is not None:  # (tracing a step: the method)
            return self.fn.__get__(m, owner)
        if fields.get("outputs"):  # (a Pending is true: made into lists by this read)
            newest = m.outputs[-1]
            if newest is not None:
                return newest
        return fields.get("output")

    def __set__(self, m: Any, value: Any) -> None:
        m.__dict__["output"] = value
