"""One model, several threads. Every public call that runs or changes a module (forward,
backward, zero_grad_parameters, update_parameters, training/evaluate, forget, the step-wise
state API, ...) holds the re-entrant lock of the module's tree, so calls on one model from
several threads run one at a time, each as if alone. Locks are per model, never global:
separate models run in parallel. A backward paired with another thread's forward, or a
step-wise forward continuing another thread's sequence, raises StateError instead of silently
mixing them: hold `module.locked()` around a whole forward/backward pair (or a sequence), or
give each thread its own copy (`copy.deepcopy(model)`).

All modules of a tree share one lock (a group, created at the tree's first call and merged
when a child is added to a tree in use or a module is shared by two trees), so a call takes one
lock whatever the tree's size. A call on a module nested in another module's call (a custom
forward calling another model) takes that model's lock too: two threads nesting two models'
calls in opposite orders would deadlock; don't.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from threading import get_ident
from typing import Any

from ..errors import ArgumentTypeError, StateError, TapernnError

# the public entry points a Module subclass may define that run or change module state
LOCKED = (
    "forward",
    "backward",
    "zero_grad_parameters",
    "update_parameters",
    "training",
    "evaluate",
    "forget",
    "reset",
    "astype",
    "state_dict",
    "load_state_dict",
    "set_passes",
    "flatten_parameters",
    "remember",
    "mask_zero",
    "max_bptt_step",
    "get_hidden_state",
    "set_initial_state",
    "get_grad_initial_state",
    "set_grad_hidden_state",
    "get_grad_hidden_state",
    "set_hidden_state",
    "reinforce",
)


class _Group:
    """The lock shared by the modules of one tree; merged groups point at one root group."""

    __slots__ = ("lock", "parent")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.parent: _Group | None = None


_MERGING = threading.Lock()  # held only while trees get or merge groups (construction, first use)


def _root(g: _Group) -> _Group:
    while g.parent is not None:
        g = g.parent
    return g


def _merge(modules: list) -> _Group:
    """One group for all `modules` (and every module already sharing a group with them)."""
    with _MERGING:
        roots = {}
        for m in modules:
            g = m.__dict__.get("_lock_group")
            if g is not None:
                r = _root(g)
                roots[id(r)] = r
        root = next(iter(roots.values())) if roots else _Group()
        for r in roots.values():
            if r is not root:
                r.parent = root
        for m in modules:
            if m.__dict__.get("_lock_group") is None:
                m.__dict__["_lock_group"] = root
        return root


def group_of(module: Any) -> _Group:
    g = module.__dict__.get("_lock_group")
    if g is None:  # first use of this tree: every module of it gets one group
        g = _merge(list(module.modules()))
    return _root(g)


def joined(parent: Any, child: Any) -> None:
    """`child` was registered under `parent`: a tree already in use takes it into its group
    (a tree not used yet gets one group at its first call)."""
    if parent.__dict__.get("_lock_group") is not None:
        _merge([parent, *child.modules()])


class tree_locked:  # (lower case: used like a function, `with tree_locked(m):`)
    """Hold the lock of `module`'s tree (re-entrant)."""

    __slots__ = ("lock", "module")

    def __init__(self, module: Any):
        self.module, self.lock = module, None

    def __enter__(self) -> None:
        self.lock = _acquire(self.module)

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _acquire(module: Any) -> threading.RLock:
    while True:
        group = module.__dict__.get("_lock_group")  # (group_of, inlined: every call runs this)
        if group is None:
            group = group_of(module)
        while group.parent is not None:
            group = group.parent
        lock = group.lock
        lock.acquire()
        if group.parent is None:  # still the tree's group (not merged away meanwhile)
            return lock
        lock.release()


def locked_method(fn: Callable) -> Callable:
    """`fn(self, ...)` run holding `self`'s tree lock; forward also records its thread. A
    forward or backward marked `steady_entry` (Module's, Sequencer's: with one input, or the
    (input, grad_output[, need_grad_input]) of a backward, the body is Module's) calls the
    steady path's locked entry directly when `self` has one (nn.steady: `entry` holds the lock
    and makes these checks itself; `backward_entry` returns MISS where the general path must
    run: it checks, raises or runs)."""
    if getattr(fn, "_tapernn_locked", False):
        return fn
    entry = getattr(fn, "steady_entry", False)

    if entry and fn.__name__ == "backward":

        @functools.wraps(fn)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            rt = self.__dict__.get("_runtime")
            steady = rt.steady if rt is not None else None
            if steady is not None:  # (input, grad_output[, need_grad_input]), passed on as
                n = len(args)  # three positionals: no `**kwargs` call (~0.2 us a call)
                if n == 2 and len(kwargs) == 1:
                    flag = kwargs.get("need_grad_input", steady.MISS)
                    if flag is not steady.MISS:
                        out = steady.backward_entry(args[0], args[1], flag)
                        if out is not steady.MISS:
                            return out
                elif (n == 2 or n == 3) and not kwargs:
                    out = steady.backward_entry(*args)
                    if out is not steady.MISS:
                        return out
            lock = _enter(self)
            try:
                return fn(self, *args, **kwargs)
            except TypeError as e:
                refuse_bad_call(fn, self, args, kwargs, e)
                raise
            finally:
                lock.release()

    elif fn.__name__ != "forward":

        @functools.wraps(fn)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            group = self.__dict__.get("_lock_group")  # (_enter, inlined)
            if group is not None and group.parent is None:
                lock = group.lock
                lock.acquire()
                if group.parent is not None:
                    lock.release()
                    lock = _acquire(self)
            else:
                lock = _acquire(self)
            try:  # (a call without arguments, zero_grad_parameters(): no `*args` call)
                return fn(self, *args, **kwargs) if args or kwargs else fn(self)
            except TypeError as e:
                refuse_bad_call(fn, self, args, kwargs, e)
                raise
            finally:
                lock.release()

    else:

        @functools.wraps(fn)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            if entry and len(args) == 1 and not kwargs:
                rt = self.__dict__.get("_runtime")
                if rt is not None:
                    steady = rt.steady
                    if steady is not None:
                        return steady.entry(args[0])
            lock = _enter(self)
            try:
                fields = self.__dict__  # (check_sequence_owner's common case inlined)
                rt = fields.get("_runtime")
                if rt is not None and rt.history:
                    owner = getattr(rt.history[-1], "thread", None)
                    if owner is not None and owner != get_ident():
                        check_sequence_owner(self)
                out = fn(self, *args, **kwargs)
                rt = fields.get("_runtime")
                if rt is not None and rt.history:
                    record = rt.history[-1]
                    if getattr(record, "thread", None) is None:  # (a nested forward stamped it)
                        record.thread = get_ident()
                return out
            except TypeError as e:
                refuse_bad_call(fn, self, args, kwargs, e)
                raise
            finally:
                lock.release()

    run._tapernn_locked = True
    return run


_HINTS = {  # (method, offending keyword) -> what to do instead
    ("backward", "lengths"): "lengths= goes to forward only; backward uses the forward's",
    ("update_parameters", "momentum"): "a plain SGD step: for momentum use tn.optim.SGD",
}


def refuse_bad_call(fn: Callable, module: Any, args: tuple, kwargs: dict, err: TypeError) -> None:
    """A call of the entry point `fn` raised the TypeError `err`: when its arguments do not fit
    fn's signature (a wrong keyword, too many or too few), raise an ArgumentTypeError naming the
    module and what the method takes; otherwise return (the caller re-raises `err`). Only runs
    after a failure: a good call pays nothing."""
    if isinstance(err, TapernnError):
        return
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(module, *args, **kwargs)
    except TypeError as bad:
        params = list(sig.parameters.values())[1:]
        plain = [str(p.replace(annotation=inspect.Parameter.empty)) for p in params]
        takes = f"{fn.__name__}({', '.join(plain)})"
        hint = next(
            (h for (name, key), h in _HINTS.items() if name == fn.__name__ and key in kwargs), ""
        )
        if fn.__name__ == "__init__":  # (a constructor: the class, and the one fn belongs to)
            owner = fn.__qualname__.rsplit(".", 1)[0].split(".<locals>.")[-1]
            raise ArgumentTypeError(
                f"nn.{type(module).__name__}: {bad}; it takes nn.{owner}({', '.join(plain)})"
            ) from None
        try:
            who = module.describe()
        except Exception:  # noqa: BLE001 (a half-built module: its class name)
            who = type(module).__name__
        raise ArgumentTypeError(
            f"{who}: {fn.__name__}(): {bad}; it takes {takes}" + (f" ({hint})" if hint else "")
        ) from None


def _enter(module: Any) -> threading.RLock:
    """_acquire, its common case first: the tree's group found and still the root after."""
    group = module.__dict__.get("_lock_group")
    if group is not None and group.parent is None:
        lock = group.lock
        lock.acquire()
        if group.parent is None:
            return lock
        lock.release()
    return _acquire(module)


def lock_entry_points(cls: type) -> None:
    """Wrap the entry points `cls` itself defines (called for Module and every subclass), and
    its constructor in checked_init."""
    for name in LOCKED:
        fn = cls.__dict__.get(name)
        if callable(fn) and hasattr(fn, "__name__") and not isinstance(fn, type):
            setattr(cls, name, locked_method(fn))
    init = cls.__dict__.get("__init__")
    if inspect.isfunction(init) and not getattr(init, "_tapernn_checked", False):
        cls.__init__ = checked_init(init)


def checked_init(fn: Callable) -> Callable:
    """A constructor given arguments that do not fit it (`nn.Linear(3)`) raises
    ArgumentTypeError naming the class and what it takes, not Python's bare TypeError."""

    @functools.wraps(fn)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(self, *args, **kwargs)
        except TypeError as e:
            refuse_bad_call(fn, self, args, kwargs, e)
            raise

    init._tapernn_checked = True
    return init


def _other_thread(module: Any) -> int | None:
    """The thread that ran module's last forward, when that is not this thread."""
    rt = module.__dict__.get("_runtime")  # (every forward and backward runs this: inlined)
    if rt is None or not rt.history:
        return None
    owner = getattr(rt.history[-1], "thread", None)
    return owner if owner is not None and owner != get_ident() else None


def check_backward_pairing(module: Any) -> None:
    """Refuse a backward whose forward ran in another thread (it would pair with that one)."""
    owner = _other_thread(module)
    if owner is not None:
        raise StateError(
            f"{module.describe()}: backward in thread {get_ident()} would "
            f"use the forward run by thread {owner} (a module keeps one forward's "
            f"values); run forward and backward in one thread, inside "
            f"`with model.locked():` when several threads share the model, or give "
            f"each thread its own copy (copy.deepcopy)"
        )


def check_sequence_owner(module: Any) -> None:
    """Refuse a step-wise forward that would continue another thread's sequence."""
    owner = _other_thread(module)  # (usually None: checked before the tree walk is_recurrent is)
    if owner is not None and module.is_recurrent:
        raise StateError(
            f"{module.describe()}: step-wise forward in thread "
            f"{get_ident()} would continue the sequence stepped by thread "
            f"{owner} (a recurrent module remembers one sequence); call forget() "
            f"first to start a new one (inside `with model.locked():` when threads "
            f"share the model), or give each thread its own copy (copy.deepcopy)"
        )
