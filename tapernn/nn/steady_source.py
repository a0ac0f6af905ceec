"""The steady forward of one plan (nn.steady) as a generated Python function: the key check,
the hooks, the initial-state checks, the arguments, the release of the previous call's fields,
the program and the write-back each spelled out for this plan's modules and positions (no loops
over plan lists, no attribute walks), as codegen.Program spells out a graph's NumPy calls."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from functools import partial
from threading import get_ident
from typing import Any

import numpy as np

from .binding import _state_signature
from .locking import _acquire, check_sequence_owner
from .packing import VERSION
from .state_grads import (
    WATCH_MIN_BYTES,
    room_view,
    store_state_input_grads,
    tap_copies,
    tap_grads_now,
    watch_positions,
)
from .steady_fields import Restore, _deferred, _forget, _release, _state_checks, _write_back
from .write_plan import Pending


def forward_function(steady: Any) -> tuple[Callable, Callable]:
    """`forward(x) -> output` for `steady` (a Steady): what the general path does for a call
    with its signature, or `rt.slow_forward` where the call is not such a call (looked up per
    such call); and the same holding the tree lock with the thread checks (the locked
    wrapper's entry: locking.locked_method)."""
    ns: dict[str, Any] = {
        "ndarray": np.ndarray,
        "get_ident": get_ident,
        "VERSION": VERSION,
        "Pending": Pending,
        "state_signature": _state_signature,
        "steady": steady,
        "rt": steady.rt,
        "root": steady.root,
        "rf": steady.root.__dict__,
        "exe": steady.exe,
        "Record": steady.rt.record_type,
        "new_record": object.__new__,
        "run": steady._run,
        "program": steady.program,
        "saved_at": steady.saved_at,
        "shape": steady.shape,
        "dtype": steady.dtype,
        "version": steady.version,
        "training": steady.training,
        "root_dtype": steady.root_dtype,
    }

    bind = _binder(ns)

    lines = [
        "def forward(x):",
        "    if (type(x) is not ndarray or x.shape != shape",
        "            or (x.dtype is not dtype and x.dtype != dtype)",
        "            or VERSION[0] != version or root.is_training is not training",
        "            or root._dtype != root_dtype):",
        "        return rt.slow_forward((x,))",
    ]
    cleared: dict[int, str] = {}  # id(a module's fields) -> the flag: a forget cleared them
    # a cell's per-step fields the write-back below sets whole: the forget's and the release's
    # clearing of them is done only where the call does not reach it (`restore`)
    deferred, restore = _deferred(steady), Restore()
    for hook in steady.hooks:
        plan = getattr(hook, "plan", None)
        if plan is None:
            lines.append(f"    {bind(hook, 'hook')}()")
            continue
        flag = f"forgot{len(cleared)}"
        lines += _forget(plan, bind, flag, deferred, restore)
        cleared.update((id(fields), flag) for fields, _ in plan[2])
    lines += _state_checks(steady, bind, restore)
    start = len(lines)
    lines.append("    rt.last = exe")
    starts = []
    for m in steady.recurrent:
        r = bind(m, "r")
        starts.append(f"({r}, {r}._state, {r}._user_initial)")
    lines.append(f"    starts = [{', '.join(starts)}]")
    lines.append("    leaves = [x]")
    args = [bind(a, "p") if a is not None else "None" for a in steady.args]
    args[steady.data_at] = "x"
    for k, binder in steady.dynamic:  # dropout masks drawn, states read, per call
        args[k] = f"{bind(binder, 'bind')}(leaves)"
    lines.append(f"    args = [{', '.join(args)}]")
    lines += _release(steady, bind, cleared, deferred, restore)
    prog = steady.program.program
    if getattr(prog, "scratch_slots", None) or getattr(prog, "loop_scratch", None):
        # (Packing.scratch_into)
        ns["scratch_into"] = steady.exe.packing.scratch_into
        ns["release_scratch"] = steady.exe.packing.release_scratch
        lines += ["    used = scratch_into(program, args)", "    try:"]
        lines += [
            "    " + line for line in _call("outs", "program", "args", "saved_at", steady, ns)
        ]
        lines += ["    except BaseException:", "        release_scratch(program, used)"]
        lines += ["        raise", "    release_scratch(program, used, True)"]  # (panels zeroed)
    else:
        lines += _call("outs", "program", "args", "saved_at", steady, ns)
    if getattr(steady.rt.record_type.__init__, "plain", False):  # (inlined: n is this plan's)
        saved = f"list(outs[{steady.n_kept}:])" if steady.training else "None"
        lines += [
            "    record = new_record(Record)",
            "    record.exe, record.leaves, record.args = exe, leaves, args",
            f"    record.saved = {saved}",  # (before outs is cut to the kept outputs)
            f"    record.outputs = outs = outs[:{steady.n_kept}]",
            "    record.done = False",
        ]
    else:
        lines += [
            "    record = Record(exe, leaves, args, outs, saving=training)",
            "    outs = record.outputs",
        ]
    lines.append("    record.starts = starts")
    lines += _write_back(steady, bind)
    lines[start:] = restore.around(lines[start:])
    lines += [
        "    rt.history = [record]",
        "    output = outs[0]",
        '    rf["output"] = output',
        "    return output",
    ]
    rf = steady.root.__dict__
    forward = _defined(lines, ns, "forward")
    # the locked entry (locking.locked_method's forward, for one positional input): the tree
    # lock and the thread checks of the wrapper around this same body
    ns.update(_lock_names(steady), check_sequence_owner=check_sequence_owner, stamped=_stamper(rf))
    body = []
    for line in lines[1:]:
        if line.lstrip().startswith("return rt.slow_forward("):  # (stamped as the wrapper does)
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}return stamped({line.lstrip()[len('return ') :]})"
        elif line == "    return output":
            body.append("    record.thread = get_ident()")
        body.append(line)
    checks = [
        # (no local name for rt.history: it would keep the last call's record -- its saved
        # activations -- alive while this call's program runs)
        "    if rt.history:",
        '        owner = getattr(rt.history[-1], "thread", None)',
        "        if owner is not None and owner != get_ident():",
        "            check_sequence_owner(root)",
        "    if rt.steady is not steady:",  # (replaced while this call waited for the lock)
        "        return stamped(rt.forward(x))",
    ]
    entry = _defined(_locked("def forward(x):", [], checks + body), ns, "forward", "entry")
    return forward, entry


def _binder(ns: dict) -> Callable[[Any, str], str]:
    """`bind(value, prefix) -> name`: `value` put into the generated function's namespace `ns`
    under a fresh name."""

    def bind(value: Any, prefix: str) -> str:
        name = f"{prefix}{len(ns)}"
        ns[name] = value
        return name

    return bind


def _defined(lines: list[str], ns: dict, name: str, kind: str = "") -> Callable:
    """The function `name` that `lines` define, executed in `ns`; its text as `.source`."""
    source = "\n".join(lines) + "\n"
    where = f"<tapernn steady {name}{' ' + kind if kind else ''}>"
    exec(builtins.compile(source, where, "exec"), ns)  # noqa: S102
    fn = ns.pop(name) if kind else ns[name]
    fn.source = source
    return fn


def _lock_names(steady: Any) -> dict[str, Any]:
    """What `_locked`'s lines read: the root module's fields, its tree's lock (_acquire)."""
    return {"root": steady.root, "lock_fields": steady.root.__dict__, "acquire": _acquire}


def _locked(head: str, first: list[str], body: list[str]) -> list[str]:
    """`head` + `first` + `body` holding the tree lock around `body` as locking.locked_method's
    wrapper does (locking._enter: the common case inline, else _acquire)."""
    return (
        [head]
        + first
        + [
            '    group = lock_fields.get("_lock_group")',
            "    if group is not None and group.parent is None:",
            "        lock = group.lock",
            "        lock.acquire()",
            "        if group.parent is not None:",
            "            lock.release()",
            "            lock = acquire(root)",
            "    else:",
            "        lock = acquire(root)",
            "    try:",
        ]
        + ["    " + line for line in body]
        + ["    finally:", "        lock.release()"]
    )


def _stamper(fields: dict) -> Callable:
    """`stamped(out) -> out`, stamping the last record with this thread as the wrapper does
    after a general forward."""

    def stamped(out: Any) -> Any:
        rt = fields.get("_runtime")
        if rt is not None and rt.history:
            record = rt.history[-1]
            if getattr(record, "thread", None) is None:
                record.thread = get_ident()
        return out

    return stamped


def _call(result: str, program: str, args: str, private: str, steady: Any, ns: dict) -> list[str]:
    """`result = steady._run(program, args, private)`, its common case inline: while the
    program's fn and run are the ones steady._run last saw (it keeps them in `ns`, this
    function's globals), the runner it chose called directly."""
    fn, run, direct = f"{program}_fn", f"{program}_run", f"{program}_direct"
    ns[fn] = ns[run] = ns[direct] = None
    steady.fast[id(ns[program])] = (ns, fn, run, direct)
    # (its Program and its fields, bound once: a Compiled's `program` is never replaced)
    ns[f"{program}_prog"], ns[f"{program}_fields"] = ns[program].program, ns[program].__dict__
    return [
        f"    if {program}_prog.fn is {fn} and {program}_fields.get('run') is {run}:",
        "        try:",
        f"            {result} = {direct}(*{args})",
        "        except Exception:",
        f"            {result} = {program}.run({args})",
        "    else:",
        f"        {result} = run({program}, {args}, {private})",
    ]


def copies_everything(exe: Any, room: tuple | None) -> bool:
    """Whether tap_copies, given the arguments and seeds of a plain Sequencer backward of `exe`
    and no room (`room`: TrainingPair.tap_room's, None), copies each of them whole: none at a
    watched position is as large as WATCH_MIN_BYTES, so none is kept by reference. Their
    sizes are the program's nodes' (an array bound to a node has its shape and dtype)."""
    if room is not None:
        return False
    sizes = [n.nbytes for n in exe.arg_nodes if n.kind != "tap"]
    sizes += [exe.diff_outputs[k].nbytes for k in exe.seeded]
    watch = watch_positions(exe)
    return all(b < WATCH_MIN_BYTES for k, b in enumerate(sizes) if k in watch)


def _plain_copies(steady: Any, ns: dict) -> list[str]:
    """tap_copies' result for a full backward whose copies are all whole (copies_everything),
    one line per argument: what it copies (an argument bound per call, which may be no ndarray,
    as np.array there), then the output gradient's copy, none kept by reference."""
    ns["array"] = np.array
    copies = [
        f"args[{k}].copy()"
        if a is not None
        else f'(args[{k}].copy() if type(args[{k}]) is ndarray else array(args[{k}], order="C"))'
        for k, a in enumerate(steady.args)
    ]
    return [
        f"        copies = [{', '.join(copies)}]",
        "        watched = ()",
        "        gcopy = [grad_output.copy()]",
    ]


def backward_function(steady: Any, miss: object) -> tuple[Callable, Callable]:
    """`backward(input, grad_output, need_grad_input) -> grad_input` for `steady`: the backward
    paired with its forward (the same input array, one output gradient of the output's shape
    and dtype, no set_grad_hidden_state pending), or `miss` (nothing done) for any other; and
    the same holding the tree lock after the wrapper's checks (need_grad_input a bool, this
    thread's forward), `miss` where they would raise."""
    pair, exe = steady.pair, steady.exe
    n_loose, n_params = len(steady.grads), steady.n_params
    ns: dict[str, Any] = {
        "ndarray": np.ndarray,
        "get_ident": get_ident,
        "VERSION": VERSION,
        "MISS": miss,
        "steady": steady,
        "rt": steady.rt,
        "rf": steady.root.__dict__,
        "exe": exe,
        "pair": pair,
        "full": pair.backward_program(0),
        "run": steady._run,
        "with_dx": range(1, 1 + n_params),  # (the gradients accumulated at once: scratch)
        "without_dx": range(n_params),
        "gshape": steady.gshape,
        "gdtype": steady.gdtype,
        "version": steady.version,
        "store_state_input_grads": store_state_input_grads,
        "partial": partial,
        "tap_grads_now": tap_grads_now,
        "tap_copies": tap_copies,
        "watch": watch_positions(exe),
        "compute_into": exe.packing.compute_into,
        "release": exe.packing.release,
        "room_view": room_view,
        "modules": steady.cut_modules,
    }

    bind = _binder(ns)

    lines = [
        "def backward(input, grad_output, need_grad_input):",
        "    history = rt.history",
        "    if len(history) != 1:",
        "        return MISS",
        "    record = history[0]",
        "    if (record.exe is not exe or record.saved is None or input is not record.leaves[0]",
        "            or type(grad_output) is not ndarray or grad_output.shape != gshape",
        "            or (grad_output.dtype is not gdtype and grad_output.dtype != gdtype)",
        "            or VERSION[0] != version):",
        "        return MISS",  # (record.saved None: an evaluation forward, or a second backward)
    ]
    for m in steady.cut_modules:  # a set_grad_hidden_state pending: the general path
        lines += [f"    if {bind(m, 'm')}._extra_state_grads:", "        return MISS"]
    reads = ", ".join(f"args[{k}]" for k in pair.reads)
    lines += [
        "    saved = record.saved",
        "    record.saved = None",  # (consumed: freed as soon as backward returns)
        "    args = record.args",
        f"    saved += (grad_output, {reads})",
        "    if need_grad_input:",
        "        pair.last_backward = full",
        "        first = 1",
    ]
    # (the weight gradients into zeroed .grad arrays themselves: Packing.compute_into)
    into = bool(getattr(ns["full"].program, "dest_slots", None))
    call = _call("grads", "full", "saved", "with_dx", steady, ns)
    if into:  # (a raise: Packing.release zeroes panels a loop left for the backward to overwrite)
        lines += ["        compute_into(full, 1, saved)", "        try:"]
        lines += ["        " + line for line in call]
        lines += ["        except BaseException:", "            release(full, True)"]
        lines += ["            raise", "        release(full)"]
    else:
        lines += ["    " + line for line in call]
    plain = False  # (the full backward's copies spelled out: _plain_copies)
    if steady.cut_modules:  # the saved bytes the copies below may go into (tap_room: fixed
        r = pair.tap_room(ns["full"])  # per program, so the full backward's is spelled out)
        plain = copies_everything(exe, r) and all(
            a is None or type(a) is np.ndarray for a in steady.args
        )
        if not plain:
            room = "None" if r is None else f"room_view(saved[{r[0]}], {r[1]})"
            lines.append(f"        room = {room}")
    lines += [
        "    else:",
        "        program = pair.last_backward = pair.backward_program(1)",
        "        first = 0",
        "        compute_into(program, 0, saved)",
        "        try:",
        "            grads = run(program, saved, without_dx)",
        "        except BaseException:",
        "            release(program, True)",
        "            raise",
        "        release(program)",
    ]
    if steady.cut_modules:
        lines += [
            "        r = pair.tap_room(program)",
            "        room = None if r is None else room_view(saved[r[0]], r[1])",
        ]
    lines += [
        "    del saved",
    ]
    if exe.state_wrt:  # a user-set initial state's gradient
        start, n = n_params, len(exe.state_wrt)
        lines.append(
            f"    store_state_input_grads(exe, None, list(grads[first + {start}:"
            f" first + {start + n}]))"
        )
    lines.append("    record.done = True")
    for k, grad in enumerate(steady.grads):  # (in place: the planned gradient arrays)
        lines += [
            f"    g = {bind(grad, 'grad')}",
            f"    if grads[first + {k}] is not g:",  # (else computed into it: compute_into)
            f"        g += grads[first + {k}]",
        ]
    for j, group in enumerate(steady.groups):
        k = n_loose + j
        if group.block.intact:  # (Group.accumulate's case inlined: a member rebound since
            lines += [  # bumps VERSION, so the block is still intact when this runs)
                f"    g = {bind(group.block.grad, 'grad')}",
                f"    if grads[first + {k}] is not g:",
                f"        g += grads[first + {k}]",
            ]
        else:
            lines.append(f"    {bind(group, 'group')}.accumulate(grads[first + {k}])")
    lines += [
        "    grad_input = grads[0] if need_grad_input else None",
        "    del grads",  # (the parameter gradients are accumulated: freed before the copies)
    ]
    if steady.cut_modules:  # copies for a lazy get_grad_hidden_state (or held: tap_copies)
        general = [
            "    copies = tap_copies(list(args) + [grad_output], room, watch)",
            "    watched = copies.watched",
            "    gcopy = [copies.pop()]",
        ]
        if plain:
            lines += ["    if need_grad_input:"] + _plain_copies(steady, ns)
            lines += ["    else:"] + ["    " + line for line in general]
        else:
            lines += general
        lines.append(
            "    taps = partial(tap_grads_now, rt, exe, record.leaves, record.starts, copies,"
            + " gcopy, modules, watched)"
        )
        for m in steady.cut_modules:  # (state_grads.tap_later, inlined)
            lines.append(f'    {bind(m.__dict__, "f")}["_grad_hidden"] = taps')
    lines += [
        '    rf["grad_input"] = grad_input',  # (None without need_grad_input)
        "    return grad_input",
    ]
    backward = _defined(lines, ns, "backward")
    # the locked entry (locking.locked_method's wrapper of Module.backward): anything but the
    # steady call's arguments (MISS) takes the general path, which checks and raises
    ns.update(_lock_names(steady))
    first = [
        "    if need_grad_input is not True and need_grad_input is not False:",
        "        return MISS",
    ]
    assert lines[1:5] == [  # (the entry reads the one record once: its owner checked here)
        "    history = rt.history",
        "    if len(history) != 1:",
        "        return MISS",
        "    record = history[0]",
    ]
    checks = [  # (check_backward_pairing: another thread's forward raises there)
        '    owner = getattr(record, "thread", None)',
        "    if owner is not None and owner != get_ident():",
        "        return MISS",
        "    if rt.steady is not steady:",  # (replaced while this call waited for the lock)
        "        return MISS",
    ]
    head = "def backward(input, grad_output, need_grad_input=True):"
    body = lines[1:5] + checks + lines[5:]
    entry = _defined(_locked(head, first, body), ns, "backward", "entry")
    return backward, entry
