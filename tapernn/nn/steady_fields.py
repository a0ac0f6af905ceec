"""The steady forward's lines (nn.steady_source) that touch the modules' fields: a
Sequencer's planned forget, the initial-state checks, the release of the previous call's
fields and the write-back, spelled out for one plan; and the per-step fields the write-back
sets whole, cleared only where the call leaves before it (`Restore`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .write_plan import Pending


class Restore:
    """The clearing of per-step fields that the steady forward's write-back sets whole anyway
    (`_deferred`): left out of the forget and the release, and done where the call leaves
    before its write-back -- the state check's return to the general path, or an exception
    (`around`) -- so every field is what the general forward leaves; until then they hold None
    (the previous call's values are dropped as before). Per call: 4 lists and a dict fewer
    (the dict was also one more dict-keys block a step in CPython's free lists: htiny7)."""

    def __init__(self) -> None:
        self.forget: dict[str, list[str]] = {}  # forget flag -> its clearing lines
        self.release: list[tuple[str | None, list[str]]] = []  # (forget flag or None, lines)

    def forgotten(self, indent: str) -> list[str]:
        """The forgets' clearing where they forgot (the state check's return)."""
        out = []
        for flag, clear in self.forget.items():
            out += [f"{indent}if {flag}:"] + [f"{indent}    {line}" for line in clear]
        return out

    def around(self, body: list[str]) -> list[str]:
        """`body` (the call from after the state checks to its write-back) with the clearing
        done where it raises: the forgets' where they forgot, the release's once it ran."""
        if not self.forget and not self.release:
            return body
        released = []
        if self.release:
            at = body.index("    # (released)")
            body = body[:at] + ["    released = True"] + body[at + 1 :]
            released = ["        if released:"]
            for flag, clear in self.release:
                head = "            " if flag is None else "                "
                released += [] if flag is None else [f"            if not {flag}:"]
                released += [head + line for line in clear]
        return (
            (["    released = False"] if self.release else [])
            + ["    try:"]
            + ["    " + line for line in body]
            + ["    except BaseException:"]
            + self.forgotten("        ")
            + released
            + ["        raise"]
        )


def _deferred(steady: Any) -> set[int]:
    """ids of the fields of cells whose per-step fields (outputs, inputs, states, _n_steps,
    _grad_hidden) the planned write-back sets whole (AbstractRecurrent's _write_pending,
    inlined); none where a hook the plan does not spell out runs after a forget (it might
    read them)."""
    if steady.fields is None or any(getattr(h, "plan", None) is None for h in steady.hooks):
        return set()
    return {
        id(m.__dict__)
        for m, _ in steady.fields[2]
        if getattr(type(m)._write_pending, "plain", False)
        and getattr(Pending.__init__, "plain", False)
    }


def _forget(plan: tuple, bind: Callable, flag: str, deferred: set, restore: Restore) -> list[str]:
    """A Sequencer's planned forget hook (nn.sequencer.planned_forget) spelled out; `flag`
    says whether it forgot (the release need not clear those fields again). The per-step
    fields of cells in `deferred` are cleared only where `restore` says."""
    seq, every, cells, covered = plan
    s = bind(seq, "seq")
    if getattr(type(seq).remembers, "plain", False):  # (Sequencer's, inlined)
        lines = [
            f"    mode = {s}.remember_mode",
            f'    if (mode == "both" or (mode == "train" and {s}.is_training)',
            f'            or (mode == "eval" and not {s}.is_training)):',
        ]
    else:
        lines = [f"    if {s}.remembers():"]
    lines.append(f"        {flag} = False")
    for fields in covered:
        f = bind(fields, "f")
        lines += [
            f'        if callable({f}["_grad_hidden"]):',
            f'            {f}["_grad_hidden"] = {{}}',
        ]
    lines += ["    else:", f"        {flag} = True"]
    for fields in every:  # Module._clear_memory
        lines += [
            f'        r = {bind(fields, "f")}.get("_runtime")',
            "        if r is not None:",
            "            r.history = []",
            "            r.dropped = 0",
        ]
    for fields, names in cells:  # AbstractRecurrent._clear_memory(keep_initial=True)
        f = bind(fields, "f")
        states = ", ".join(f"{name!r}: []" for name in names)
        clear = [
            f'{f}["outputs"], {f}["inputs"] = [], []',
            f'{f}["states"] = {{{states}}}',
            f'{f}["_n_steps"] = 0',
            f'{f}["_grad_hidden"] = {{}}',
        ]
        lines.append(f'        {f}["_state"] = None')
        if id(fields) in deferred:  # (the previous call's values dropped now all the same)
            lines.append(f'        {f}["outputs"] = {f}["inputs"] = {f}["states"] = None')
            lines.append(f'        {f}["_grad_hidden"] = None')
            restore.forget.setdefault(flag, []).extend(clear)
        else:
            lines += ["        " + line for line in clear]
    return lines


def _state_checks(steady: Any, bind: Callable, restore: Restore) -> list[str]:
    """The initial states' kinds as planned (_state_signature; inlined for the built-in kind
    with no initial state), else the general path (the hooks already run: the fields a
    forget leaves cleared for the write-back to set, cleared first)."""
    lines = []
    for m, signature, none in steady.stateful:
        if none:
            f = bind(m.__dict__, "f")
            test = (
                f'{f}["_state"] is not None or {f}["_user_initial"] is not None'
                f' or {f}["_mask_zero"] != {bind(signature[2], "z")}'
            )
        else:
            test = f"state_signature({bind(m, 'm')}) != {bind(signature, 'sig')}"
        lines += [f"    if {test}:"] + restore.forgotten("        ")
        lines.append("        return rt.slow_forward((x,), hooks_done=True)")
    return lines


def _release(
    steady: Any, bind: Callable, cleared: dict, deferred: set, restore: Restore
) -> list[str]:
    """Runtime._release_previous for this program (per-step fields a forget just cleared
    (`cleared`: their flag) are not cleared again; those of cells in `deferred` cleared only
    where `restore` says)."""
    lines = ["    rt.history = []", '    rf["output"] = rf["grad_input"] = None']
    for fields, output, names in steady.release:
        f = bind(fields, "f")
        if output:
            lines.append(f'    {f}["output"] = None')
        if names is not None:
            states = ", ".join(f"{name!r}: []" for name in names)
            clear = [f'{f}["outputs"], {f}["inputs"] = [], []', f'{f}["states"] = {{{states}}}']
            flag = cleared.get(id(fields))
            if id(fields) in deferred:  # (dropped now: set whole by the write-back)
                restore.release.append((flag, clear))
                clear = [f'{f}["outputs"] = {f}["inputs"] = {f}["states"] = None']
            if flag is None:
                lines += ["    " + line for line in clear]
            else:
                lines += [f"    if not {flag}:"] + ["        " + line for line in clear]
    return lines + (["    # (released)"] if restore.release else [])


def _write_back(steady: Any, bind: Callable) -> list[str]:
    """Runtime._write_back of a Sequencer call from the plan steady._fields_plan made (final
    states, `output` fields, per-step fields made when first read), or the general one."""
    if steady.fields is None:
        return ["    rt._write_back(exe, record, False)"]
    finals, outputs, pending = steady.fields
    lines = []
    for m, positions in finals:
        names = []
        for k in positions:  # (runtime._own: a view of a slab is copied)
            s = f"s{k}"
            lines += [
                f"    {s} = outs[{k}]",
                f"    b = {s}.base",
                f"    if b is not None and b.nbytes > {s}.nbytes:",
                f"        {s} = {s}.copy()",
            ]
            names.append(s)
        state = f"({', '.join(names)},)"
        if getattr(type(m)._store_state, "plain", False):  # (AbstractRecurrent's, inlined)
            lines.append(f'    {bind(m.__dict__, "f")}["_state"] = {state}')
        else:
            lines.append(f"    {bind(m, 'm')}._store_state({state})")
    for m, pos in outputs:
        lines.append(f'    {bind(m.__dict__, "f")}["output"] = outs[{pos}]')
    for m, steps in pending:
        plan = bind(steps, "steps")
        if getattr(Pending.__init__, "plain", False):  # (inlined: no __init__ frame)
            lines += [
                "    pending = new_record(Pending)",
                f"    pending.outs, pending.plan = outs, {plan}",
            ]
        else:
            lines.append(f"    pending = Pending(outs, {plan})")
        if getattr(type(m)._write_pending, "plain", False):  # (AbstractRecurrent's, inlined)
            f = bind(m.__dict__, "f")
            lines += [
                f'    {f}["_grad_hidden"] = {{}}',
                f'    {f}["outputs"] = {f}["inputs"] = {f}["states"] = pending',
                f'    {f}["_n_steps"] = {steps[3]}',
            ]
        else:
            lines.append(f"    {bind(m, 'm')}._write_pending(pending, {steps[3]})")
    return lines
