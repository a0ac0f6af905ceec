"""Gradients of recurrent states between steps (Torch7's gradOutputs/gradCells, kept per absolute
step): what each step's backward receives from the step after it, `set_grad_hidden_state(t, g)`
replacing it, and `get_grad_hidden_state(t)` reading it, stepped by hand or in a Sequencer."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from ..errors import ShapeError, StateError, TapernnError
from ..executor import gc_paused
from .step_draws import per_step
from .tap_digest import copy_and_digest, unchanged


def _absolute_step(m: Any, t: int, n_steps: int) -> int:
    if not -n_steps <= t < n_steps:
        m._extra_state_grads.pop(t)  # reported once, not on every later backward
        raise StateError(
            f"{m.describe()}: set_grad_hidden_state({t}) but {n_steps} steps were forwarded"
        )
    return t if t >= 0 else n_steps + t


def _checked(m: Any, k: int, g: Any, like: Any) -> np.ndarray:
    g = np.asarray(g, dtype=like.dtype)
    if g.shape != like.shape:
        raise ShapeError(
            f"{m.describe()}: set_grad_hidden_state gradient for "
            f"{m._leaf_name(k)!r} has shape {g.shape}, the state has {like.shape}"
        )
    return g


def _store(m: Any) -> dict:
    if not isinstance(m._grad_hidden, dict):  # a Sequencer's lazy result: stepping restarts it
        m._grad_hidden = {}
    return m._grad_hidden


def _pop_set(m: Any, step: int, n_steps: int) -> tuple | None:
    """The set_grad_hidden_state gradient for absolute `step`, consumed (one backward)."""
    for t in sorted(getattr(m, "_extra_state_grads", {})):
        if _absolute_step(m, t, n_steps) == step:
            return m._extra_state_grads.pop(t)
    return None


# ---- stepping by hand: one program per step ------------------------------------------------------


def stepwise_seeds(exe: Any, step: int, n_steps: int, seeds: list) -> list:
    """The final-state seeds of the backward of absolute `step` (of `n_steps` forwarded): per
    module, its set_grad_hidden_state(step) gradient if any (it replaces), else what the backward
    of step + 1 sent into this state, else zeros (the newest step of a chunk). What is used is
    kept as get_grad_hidden_state(step)."""
    position = {k: pos for pos, k in enumerate(exe.seeded)}  # diff output -> seed
    given: dict[Any, tuple | None] = {}
    used: dict[Any, dict[int, np.ndarray]] = {}
    for j, (m, k, node) in enumerate(exe.finals):
        pos = position.get(len(exe.real) + j)
        if pos is None:
            continue
        if m not in given:
            given[m] = _pop_set(m, step, n_steps)
        if given[m] is not None:
            g = _checked(m, k, given[m][k], node)
        else:
            kept = _store(m).get(step)
            g = kept[k] if kept is not None else np.zeros(node.shape, node.dtype)
        seeds[pos] = g
        used.setdefault(m, {})[k] = g
    for m, by_k in used.items():
        m._grad_hidden[step] = tuple(by_k[k] for k in sorted(by_k))
    return seeds


def store_state_input_grads(exe: Any, step: int | None, grads: list) -> None:
    """Gradients w.r.t. the states a program started from: a user-set initial state's go to
    get_grad_initial_state(); stepping by hand, the others become what step `step` - 1's
    backward receives (get_grad_hidden_state(step - 1))."""
    initial: dict[Any, dict[int, np.ndarray]] = {}
    earlier: dict[Any, dict[int, np.ndarray]] = {}
    for (m, k, _, user), g in zip(exe.state_wrt, grads):
        (initial if user else earlier).setdefault(m, {})[k] = g
    for m, by_k in initial.items():
        m._grad_initial = tuple(by_k[k] for k in sorted(by_k))
    if step is not None:
        for m, by_k in earlier.items():
            _store(m)[step - 1] = tuple(by_k[k] for k in sorted(by_k))


def forget_steps_before(root: Any, first_kept: int) -> None:
    """max_bptt_step dropped the records before `first_kept`: drop their state gradients too
    (the oldest kept step's backward may still write first_kept - 1)."""
    for m in root.modules():
        store = getattr(m, "_grad_hidden", None)
        if isinstance(store, dict):
            for t in [t for t in store if t < first_kept - 1]:
                del store[t]


# ---- a Sequencer: one unrolled program -----------------------------------------------------------


def _recurrent_steps(exe: Any) -> dict:
    """module -> its steps in this program (the `outputs` probes), for recurrent modules;
    computed once per program (every backward asks)."""
    cached = getattr(exe, "_recurrent_steps", None)
    if cached is None:
        steps: dict[Any, list] = {}
        for m, f, t, _, _ in exe.probes:
            if f == "outputs" and hasattr(m, "_extra_state_grads"):
                steps.setdefault(m, []).extend(t.steps() if hasattr(t, "steps") else [t])
        cached = exe._recurrent_steps = {m: sorted(ts) for m, ts in steps.items()}
    return cached


def sequence_cuts(exe: Any) -> frozenset:
    """(module, step) for each set_grad_hidden_state pending on a module of this program: the
    variant program stops the gradient from step + 1 there (the set value replaces it)."""
    cuts = set()
    for m, steps in _recurrent_steps(exe).items():
        for t in list(m._extra_state_grads) if m._extra_state_grads else ():
            cuts.add((m, steps[_absolute_step(m, t, len(steps))]))
    return frozenset(cuts)


def sequence_seeds(variant: Any) -> list:
    """(module, step, leaf, state node, gradient) per set_grad_hidden_state leaf: extra seeds of
    the variant program, on the state node of that step. Consumes the requests."""
    out = []
    for m, steps in _recurrent_steps(variant).items():
        for t, grads in sorted(m._extra_state_grads.items()):
            step = steps[_absolute_step(m, t, len(steps))]
            nodes = [
                n
                for name in m.state_names
                for mm, f, tt, _, ns in variant.probes
                if mm is m and f == "state:" + name and tt == step
                for n in ns
            ]
            out += [
                (m, step, k, node, _checked(m, k, grads[k], node)) for k, node in enumerate(nodes)
            ]
        m._extra_state_grads.clear()
    return out


def store_tap_grads(variant: Any, tap_grads: list, seeded: list) -> None:
    """get_grad_hidden_state of a Sequencer call: the gradient of each tap (what step t + 1 sent
    back into the state of step t), or where a set replaced it, the set value."""
    by_step: dict[Any, dict[int, dict[int, np.ndarray]]] = {}
    for (m, t, k, _), g in zip(variant.tap_inputs, tap_grads):
        by_step.setdefault(m, {}).setdefault(t, {})[k] = g
    for m, t, k, _, g in seeded:
        by_step.setdefault(m, {}).setdefault(t, {})[k] = g
    for m, steps in by_step.items():
        m._grad_hidden = {t: tuple(ks[k] for k in sorted(ks)) for t, ks in steps.items()}


def _variant(rt: Any, exe: Any, cuts: frozenset, leaves: list, starts: list) -> Any:
    """`exe` traced again with state taps and `cuts`, cached on the runtime `rt`. The recurrent
    modules are put back where they started that call, so the trace matches the forward's."""
    key = (exe.key, frozenset((id(m), t) for m, t in cuts))
    variant = rt.variants.get(key)
    if variant is None:
        tree, names, n_diff, passes = exe.trace_args
        root = rt.module
        now = [(m, m._state, m._user_initial) for m, _, _ in starts]
        try:
            for m, state, user in starts:
                m._state, m._user_initial = state, user
            with gc_paused():
                variant = type(exe)(
                    root,
                    leaves,
                    tree,
                    names,
                    root.is_training,
                    exe.history_mode,
                    n_diff,
                    passes,
                    exe.options,
                    cuts=cuts,
                )
        finally:
            for m, state, user in now:
                m._state, m._user_initial = state, user
        rt.variants[key] = variant
    return variant


def args_like(variant: Any, base_args: list, base: Any) -> list:
    """A variant's arguments from the base program's (same inputs, dropout masks included),
    zeros for the taps. A rolled base binds its inputs in another order than the unrolled
    variant: then each is found by kind and name (each must be there exactly once); a rolled
    loop's masks by the names of their rows (nn.step_draws.per_step)."""
    base, base_args = per_step(base, base_args)
    mine = [(n.kind, n.name) for n in variant.arg_nodes if n.kind != "tap"]
    theirs = [(n.kind, n.name) for n in base.arg_nodes]
    # (positionally when the names match, or differ only as a rolled base names its states)
    if theirs == mine or _renamed_alike(variant, base):
        it = iter(base_args)
        return [
            np.zeros(n.shape, n.dtype) if n.kind == "tap" else next(it) for n in variant.arg_nodes
        ]
    # by kind and name; a state by its module and position (its name says where the trace
    # first asked for it: "0.h0" or "state.h0" in a rolled call, "0.0.h0" in the variant)
    mine = [_arg_key(variant, n) for n in variant.arg_nodes if n.kind != "tap"]
    theirs = [_arg_key(base, n) for n in base.arg_nodes]
    by: dict[tuple, list] = {}
    for key, a in zip(theirs, base_args):
        by.setdefault(key, []).append(a)
    if sorted(by, key=repr) != sorted(set(mine), key=repr):
        by = _blocks_as_members(variant, base, by)  # (one of them traced with a block broken)
    if sorted(by, key=repr) != sorted(set(mine), key=repr) or any(len(v) != 1 for v in by.values()):
        raise TapernnError(
            f"{base.graph.meta.root}: the state-gradient variant's inputs "
            f"do not match the program's ({sorted(set(mine) ^ set(by), key=repr)})"
        )
    return [
        np.zeros(n.shape, n.dtype) if n.kind == "tap" else by[_arg_key(variant, n)][0]
        for n in variant.arg_nodes
    ]


def _blocks_as_members(variant: Any, base: Any, by: dict) -> dict:
    """`by` (the base's arguments by key) with each parameter block the variant does not read as
    a block split into its members' rows, then each block the variant reads whole that the base
    read member by member joined from them. A program traced before `p.data = other` (nn.packing:
    the block breaks) reads the block, its variant traced after reads the members; a program
    traced with a broken block and its variant after flatten_parameters(), the other way round."""
    wanted = {_arg_key(variant, n) for n in variant.arg_nodes if n.kind != "tap"}
    out = dict(by)
    for g in base.packing.groups:
        key = ("param", g.input.name)
        if key in wanted or key not in out or len(out[key]) != 1:
            continue
        block = out.pop(key)[0]
        for n, (a, b) in zip(g.nodes, g.rows):
            if n is not None:
                out.setdefault(("param", n.name), []).append(block[a:b])
    for g in variant.packing.groups:
        key = ("param", g.input.name)
        parts = [out.get(("param", n.name)) if n is not None else None for n in g.nodes]
        if key in out or any(v is None or len(v) != 1 for v in parts):
            continue  # (a member the program does not read: no block to join)
        for n in g.nodes:
            del out[("param", n.name)]
        out[key] = [np.concatenate([v[0] for v in parts], axis=0)]
    return out


def _arg_key(exe: Any, n: Any) -> tuple:
    """An argument's identity across traces: (kind, name), or for a recurrent module's state
    ("state", id(module), k, shape)."""
    owner = getattr(exe, "state_owners", {}).get(n) if n.kind == "state" else None
    return (n.kind, n.name) if owner is None else ("state", id(owner[0]), owner[1], n.shape)


def _renamed_alike(variant: Any, base: Any) -> bool:
    """Whether the variant's inputs (taps aside) are the base's in the same order, of the same
    kind, shape and dtype, with names equal or differing only in their scope prefix, each
    such last name part once (a remembered rolled call names its state inputs "state.h0"
    where the unrolled variant says "0.h0"): then the base's arguments bind positionally."""
    mine = [n for n in variant.arg_nodes if n.kind != "tap"]
    theirs = list(base.arg_nodes)
    if len(mine) != len(theirs):
        return False
    renamed = []
    for a, b in zip(mine, theirs):
        if (a.kind, a.shape, a.dtype) != (b.kind, b.shape, b.dtype):
            return False
        if a.name != b.name:
            last = a.name.rsplit(".", 1)[-1]
            if last != b.name.rsplit(".", 1)[-1]:
                return False
            renamed.append(last)
    lasts = [n.name.rsplit(".", 1)[-1] for n in mine]
    return all(lasts.count(last) == 1 for last in renamed)


def backward_variant(rt: Any, record: Any, cuts: frozenset, seeds: list) -> tuple:
    """A Sequencer backward with set_grad_hidden_state requests: the variant program (same
    arguments, dropout masks included) with the set values as extra seeds and the gradient from
    the next step cut there. Returns (variant, its gradients)."""
    variant = _variant(rt, record.exe, cuts, record.leaves, record.starts)
    seeded = sequence_seeds(variant)
    pair = variant.compile_training(tuple(node for *_, node, _ in seeded))
    args = args_like(variant, record.args, record.exe)
    saved = pair.saved(pair.forward.run(args))
    grads = pair.run_backward(saved, args, seeds + [g for *_, g in seeded])
    store_tap_grads(variant, list(grads[len(grads) - len(variant.tap_inputs) :]), seeded)
    return variant, grads


def later_tap_grads(
    rt: Any, record: Any, seeds: list, modules: list | None = None, room: Any = None
) -> None:
    """get_grad_hidden_state after a plain Sequencer backward: computed on first request by the
    tapped variant, from copies of this call's arguments and seeds (a later parameter update or
    refilled input buffer must not change what the backward saw). `modules`: the program's
    recurrent modules (`_recurrent_steps`), when the caller has them. `room`: dead bytes the
    copies that fit are written into (TrainingPair.tap_room; tap_copies)."""
    exe = record.exe
    if modules is None:
        modules = list(_recurrent_steps(exe))
    if not modules:
        return
    copies = tap_copies(list(record.args) + list(seeds), room, watch_positions(exe))
    n = len(record.args)
    tap_later(rt, record, copies[:n], copies[n:], modules, getattr(copies, "watched", ()))


def tap_places(sizes: list[int], room: int, watch: frozenset = frozenset()) -> dict[int, int]:
    """Position -> byte offset in a room of `room` bytes of each array (of `sizes` bytes) placed
    there: those tap_copies would copy first (not at a position in `watch`, or smaller than
    WATCH_MIN_BYTES: parameters), then those it may keep by reference; largest first within
    each; each where the last placed one ends (64-byte aligned), if it fits."""
    places, end = {}, 0
    held = [k in watch and sizes[k] >= WATCH_MIN_BYTES for k in range(len(sizes))]
    for k in sorted(range(len(sizes)), key=lambda k: (held[k], -sizes[k])):
        start = -(-end // 64) * 64
        if sizes[k] and start + sizes[k] <= room:
            places[k], end = start, start + sizes[k]
    return places


def room_view(saved: Any, nbytes: int) -> np.ndarray | None:
    """The first `nbytes` of the saved array `saved` as flat uint8 (tap_copies' room), None
    unless it is one contiguous ndarray that long."""
    if type(saved) is not np.ndarray or not saved.flags.c_contiguous or saved.nbytes < nbytes:
        return None
    return saved.reshape(-1).view(np.uint8)[:nbytes]


def tap_copies(
    arrays: list, room: np.ndarray | None, watch: frozenset = frozenset()
) -> list[np.ndarray]:
    """Copies of `arrays` (a call's arguments and seeds). With `room` (a flat uint8 view of
    bytes that are dead but stay allocated: the forward slab's consumed gate rows, which
    TrainingPair.tap_room finds), the ndarrays that fit are written into it (tap_places)
    instead of into new memory; of the rest (all of them without a room: a masked loop's
    backward, unroll=True), one at a position in `watch` (the data inputs and
    output gradients, not the parameters: watch_positions) that is C-contiguous and at least
    WATCH_MIN_BYTES is not copied but kept with its fingerprint (`Copies.watched`:
    tap_grads_now raises if it changed); the others are fresh copies."""
    ndarray = np.ndarray
    arrays = [a if type(a) is ndarray else np.array(a) for a in arrays]
    places = tap_places([a.nbytes for a in arrays], room.nbytes, watch) if room is not None else {}
    out = Copies()
    held = [
        k
        for k, a in enumerate(arrays)
        if k not in places and k in watch and a.nbytes >= WATCH_MIN_BYTES and a.flags.c_contiguous
    ]
    into = {  # (the room's bytes; fresh C arrays for the rest but the held: a.copy()'s)
        k: room[at : at + a.nbytes].view(a.dtype).reshape(a.shape)
        if (at := places.get(k)) is not None
        else np.empty(a.shape, a.dtype)
        for k, a in enumerate(arrays)
        if k not in held
    }
    prints = copy_and_digest(
        [arrays[k] for k in held], [(d, arrays[k]) for k, d in into.items()], room
    )
    out.extend(into.get(k, a) for k, a in enumerate(arrays))
    out.watched = [(k, arrays[k], fp) for k, fp in zip(held, prints())]
    return out


# an argument or seed that does not fit the tap room is kept by reference (and fingerprinted:
# nn/tap_digest.py) from this size up; below it a fresh copy costs less than zlib's fingerprint.
# Parameters are always copied: a training loop's update changes them, and a reference would
# make get_grad_hidden_state after an update raise (htap: copying costs a pass more than the
# numba digest, ~0.1 ms at (32, 50, 256) f32, BENCHMARKS.md htap)
WATCH_MIN_BYTES = 1 << 16


class Copies(list):
    """tap_copies' result: the arrays, and `watched`: (position, array, fingerprint) of those
    kept by reference (not copied)."""

    def __init__(self):
        super().__init__()
        self.watched: list = []


def watch_positions(exe: Any) -> frozenset:
    """Positions in (arguments + seeds) of a plain Sequencer backward of `exe` that tap_copies
    may keep by reference: every one but the parameters' (cached per program)."""
    cached = exe.__dict__.get("_watch_positions")
    if cached is None:
        kinds = [n.kind for n in exe.arg_nodes if n.kind != "tap"]
        cached = frozenset(k for k, kind in enumerate(kinds) if kind != "param")
        cached |= frozenset(range(len(kinds), len(kinds) + len(exe.seeded)))
        exe.__dict__["_watch_positions"] = cached
    return cached


def check_unchanged(watched: list, names: list) -> None:
    """StateError if an array tap_copies kept by reference has changed since (`names`: what
    each position is, for the message)."""
    for k, a, fp in watched:
        if not unchanged(a, fp):
            raise StateError(
                f"get_grad_hidden_state: {names[k]} was changed in place after the backward "
                "it belongs to; it was kept by reference, not copied (its copy did not fit "
                "the saved slab's dead rows), so the state gradients of that backward can no "
                "longer be computed: call get_grad_hidden_state before changing it"
            )


def tap_later(
    rt: Any, record: Any, args: list, seeds: list, modules: list, watched: Any = ()
) -> None:
    """later_tap_grads with the copies of the call's arguments and seeds made (nn.steady's
    generated backward makes them, and this partial, itself)."""
    compute = partial(
        tap_grads_now, rt, record.exe, record.leaves, record.starts, args, seeds, modules, watched
    )
    for m in modules:
        m.__dict__["_grad_hidden"] = compute  # (a plain field: no registration check)


def tap_grads_now(
    rt: Any,
    exe: Any,
    leaves: list,
    starts: list,
    args: list,
    seeds: list,
    modules: list,
    watched: Any = (),
) -> None:
    """The gradients into the states of a plain Sequencer backward (its program `exe`, its
    input `leaves`, initial states `starts`, copies of its arguments and seeds), computed by
    the tapped variant and stored in `modules`' _grad_hidden (a get_grad_hidden_state).
    `watched`: those kept by reference (tap_copies), checked unchanged first."""
    if watched:
        names = [f"argument {n.name!r}" for n in exe.arg_nodes if n.kind != "tap"]
        check_unchanged(watched, names + ["the output gradient"] * len(seeds))
    variant = _variant(rt, exe, frozenset(), leaves, starts)
    pair = variant.compile_training()
    full = args_like(variant, args, exe)
    grads = pair.run_backward(pair.saved(pair.forward.run(full)), full, seeds)
    for m in modules:
        m._grad_hidden = {}
    store_tap_grads(variant, list(grads[len(grads) - len(variant.tap_inputs) :]), [])


def tap_copy_bytes(exe: Any) -> int:
    """Bytes later_tap_grads copies into new memory on every plain Sequencer backward of `exe`
    (its arguments and seeds, less those placed in the pair's tap_room and those it keeps by
    reference, room or not: watch_positions, WATCH_MIN_BYTES, C-contiguous arguments assumed),
    0 where it copies nothing (no recurrent module, or step-wise use)."""
    if exe.history_mode or not _recurrent_steps(exe):
        return 0
    sizes = [n.nbytes for n in exe.arg_nodes if n.kind != "tap"]
    sizes += [exe.diff_outputs[k].nbytes for k in exe.seeded]
    pair = exe.training_pair
    room = pair.tap_room(pair.last_backward) if pair is not None else None
    watch = watch_positions(exe)
    placed = tap_places(sizes, room[1], watch) if room is not None else {}
    return sum(
        b
        for k, b in enumerate(sizes)
        if k not in placed and (k not in watch or b < WATCH_MIN_BYTES)
    )
