"""`Module`: the Torch7-style module API (forward/backward/output/grad_input,
parameters, modes, state dicts) over symbolic `build` methods traced by the outermost forward.

Threads: every public call that runs or changes a module holds its tree's lock (nn.locking), so
one model shared by threads runs one call at a time, each correct; separate models run in
parallel. A backward paired with another thread's forward raises StateError: hold
`with model.locked():` around forward+backward (or a step-wise sequence) when threads share a model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import random as tn_random
from .. import validation as check
from ..errors import (
    ArgumentError,
    ArgumentTypeError,
    DTypeError,
    NotPicklableError,
    ShapeError,
    build_failed,
    missing_build,
    no_program,
    where,
)
from ..optim import subtract_scaled
from ..regions import PlanOptions
from ..serialization import load_state, state_of
from ..tracing import Var, current_scope, current_step, scope
from .config_key import changed, is_array_setting, is_function_setting, is_setting
from .context import _BUILD, current_build
from .locking import check_backward_pairing, joined, lock_entry_points, tree_locked
from .packing import VERSION as STORAGE_VERSION
from .packing import block_key, pack_module, storage
from .packing import changed as packing_changed
from .parameter import Parameter, reinitialise, uniform
from .printing import tree
from .settings import rules, rules_of


class Module:
    """Base class of every layer, container, recurrent module and criterion.

    Subclasses declare parameters and children in `__init__` (attribute assignment registers
    them) and describe their computation in `build(x)` with symbolic ops. Calling a module on
    arrays runs `forward`; calling it on Vars (inside another module's build) records it.
    """

    is_recurrent = False  # carries state from one forward to the next (AbstractRecurrent)
    call_inputs: tuple[str, ...] = ()  # plain fields bound at call time, not traced (config_key)
    buffers: tuple[str, ...] = ()  # plain float fields state_dict saves (PyTorch's buffers)
    # graph inputs' names of a call's two arguments: a criterion's; a Sequencer's lengths= mask
    arg_names: tuple[str, str] = ("input", "target")
    _drawn_whole = False  # module-level diagrams: one box per step, what it holds inside it
    setting_rules = rules()  # setting name -> its check, run at every assignment (nn.settings)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        lock_entry_points(cls)  # a subclass's own forward/backward/... hold the tree's locks too
        cls.setting_rules = rules_of(cls)  # (its bases' rules and its own)

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_children", {})
        self.output: Any = None
        self.grad_input: Any = None
        self.is_training = True
        self._passes = self._plan_options = None
        self._runtime = None
        self._dtype = np.dtype(np.float64)

    # ---- registration ---------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        rule = type(self).setting_rules.get(name)  # a declared setting: checked (normalised)
        value = value if rule is None else rule(self, name, value)  # at every assignment
        if isinstance(value, (Parameter, Module)):  # (other values: fields, set every call)
            params, children = self.__dict__.get("_params"), self.__dict__.get("_children")
            if isinstance(value, Parameter) and params is not None:
                value.name = value.name or name
                params[name] = value
                packing_changed()
            elif isinstance(value, Module) and children is not None and not name.startswith("_"):
                self._adopt_dtype(check.not_holding(self, value))
                children[name] = value
                joined(self, value)
                packing_changed()
        elif name in type(self).call_inputs:
            pass  # bound at every call (NCEModule.z): not part of what was traced
        elif is_setting(name, value) or is_function_setting(name, value):  # d.p = 0.2
            fields = self.__dict__  # (a new field too: it may shadow a class default)
            if name not in fields or changed(fields[name], value):
                packing_changed()  # (the steady path and the tree cache look again: config_key)
        elif isinstance(value, np.ndarray) and is_array_setting(name):
            packing_changed()  # an array constant (re)bound: config_key.array_settings
        object.__setattr__(self, name, value)

    def add_child(self, name: str, module: Module) -> Module:
        check.part_name(self, "child", name)
        check.module(self, "a child" if name.isdigit() else name, module)
        self._adopt_dtype(check.not_holding(self, module))
        self._children[name] = module
        joined(self, module)
        packing_changed()
        return module

    def _adopt_dtype(self, child: Module) -> None:
        """A container built around converted modules (`Sequencer(LSTM(3, 4).float())`) computes
        in their dtype: it takes the child's while it holds no parameters of its own."""
        theirs = child._dtype != self._dtype and any(m._params for m in child.modules())
        if theirs and not any(m._params for m in self.modules()):  # (each walk only if needed)
            for m in self.modules():
                m._dtype = child._dtype

    def named_children(self) -> Iterator[tuple[str, Module]]:
        return iter(self._children.items())

    def children(self) -> list[Module]:
        return list(self._children.values())

    def modules(self) -> Iterator[Module]:
        yield self
        for child in self._children.values():
            yield from child.modules()

    def named_parameters(self, prefix: str = "") -> dict[str, Parameter]:
        out: dict[str, Parameter] = {}
        seen: set[int] = set()  # shared parameters are listed once (first name), also one
        for name, p in self._params.items():  # under two attributes (self.W = self.weight)
            if id(p) not in seen:
                seen.add(id(p))
                out[prefix + name] = p
        for cname, child in self._children.items():
            for name, p in child.named_parameters(f"{prefix}{cname}.").items():
                if id(p) not in seen:
                    seen.add(id(p))
                    out[name] = p
        return out

    def parameters(self) -> list[Parameter]:
        return list(self.named_parameters().values())

    def parameter(
        self,
        name: str,
        shape: tuple[int, ...],
        init: Any = "uniform",
        bound: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> Parameter:
        """Register a parameter: init "uniform" (U(+-bound), default 1/sqrt(shape[-1])), "zeros",
        "ones", "normal" (N(0, 1)) or an ndarray."""
        check.free_name(self, name)
        shape = tuple(check.size(self, f"parameter {name!r} shape", s, minimum=0) for s in shape)
        rng = check.generator(self, "rng", rng)
        if isinstance(init, np.ndarray):
            if init.shape != shape:
                raise ShapeError(
                    f"parameter {name!r}: init array has shape {init.shape}, expected {shape}"
                )
            data = init.astype(self._dtype, copy=True)
        elif init == "uniform":
            data = uniform(shape, bound if bound is not None else 1 / np.sqrt(shape[-1]), rng)
        elif init in ("zeros", "ones"):
            data = (np.zeros if init == "zeros" else np.ones)(shape)
        elif init == "normal":
            data = tn_random.generator(rng).standard_normal(shape)
        else:
            raise ArgumentError(
                f"{check.who(self)}: parameter {name!r}: init must be one of "
                f"'uniform', 'zeros', 'ones', 'normal' or an array, got "
                f"{check.got(init)}"
            )
        p = Parameter(data.astype(self._dtype), name)
        p._init = (init if isinstance(init, str) else "array", bound)
        p._rng = rng  # (what reset() draws from)
        if isinstance(init, np.ndarray):  # (what reset() restores: NCEModule's -log(V) bias)
            p._init_array = init.copy()
        p._home = self
        setattr(self, name, p)
        pack_module(self, block_key(p))
        return p

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise NotPicklableError.of(self.describe())

    def __deepcopy__(self, memo: dict) -> Module:
        # numpy copies views as independent arrays: rebuild the copy's parameter blocks
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        if callable(self.__dict__.get("_grad_hidden")):  # a backward's pending state gradients
            self._grad_hidden()  # (computed now, as on request: a partial over its programs)
        for key, value in self.__dict__.items():
            # (its own lock at first use; its own serial: another module to config_key)
            if key == "_runtime":  # traced again: the programs' bindings (closures, which
                new.__dict__[key] = None  # deepcopy shares) read this module's parameters
            elif key not in ("_lock_group", "_storage_cache", "_serial"):
                object.__setattr__(new, key, copy.deepcopy(value, memo))
        pack_module(new)
        return new

    # ---- symbolic application --------------------------------------------------------------------

    def build(self, x: Any) -> Any:
        raise missing_build(self.describe(), "input")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _BUILD.get() is not None and _contains_var(args) and not kwargs:
            return self.apply(*args)
        return self.forward(*args, **kwargs)  # (forward's keywords, e.g. Sequencer's lengths=)

    def apply(self, *args: Any) -> Any:
        """Record this module on symbolic inputs, inside its own scope."""
        ctx = current_build()
        with scope(ctx.child_name(self)):
            ctx.scopes.setdefault(current_scope(), self.describe())
            ctx.stack.append(self)
            nodes = ctx.tape.graph.nodes
            before = len(nodes)
            try:
                out = self.build(*args)
            except (TypeError, ShapeError) as e:  # (Python's, naming no module; an op's refusal)
                raise build_failed(self, e, len(args))
            finally:
                ctx.stack.pop()
            if len(nodes) == before and next(self.named_children(), None) is None:
                ctx.note_alias(out, nodes[-1].id if nodes else -1)
            if current_step() is None and not ctx.history_mode:
                ctx.probe(self, "output", None, out)
        return out

    def expect(self, ok: bool, message: str, cls: type = ShapeError) -> None:
        """Raise `cls` naming this module's path and step unless `ok`."""
        if not ok:
            raise cls(
                f"{self.describe()}{where(current_scope() or 'top', current_step())}: {message}"
            )

    # ---- running -----------------------------------------------------------------------------

    def forward(self, input: Any) -> Any:
        rt = self._runtime
        if rt is None:
            from .runtime import runtime_of

            rt = runtime_of(self)
        steady = rt.steady  # (Runtime.forward inlined: the steady path, nn.steady)
        if steady is not None:
            return steady.forward(input)
        return rt.slow_forward((input,))

    def backward(self, input: Any, grad_output: Any, need_grad_input: bool = True) -> Any:
        """grad_input, accumulating parameter gradients (Torch7 semantics). Given an input other
        than the last forward's (same shapes), the gradient at *that* input, as Torch7's Linear
        (gradWeight += grad_outputᵀ·input): recomputed with the forward's dropout masks and
        states; `output` keeps the forward's value. Stepped by hand, each step's own input.
        need_grad_input=False: parameter (and state) gradients only, by a backward program
        without the input-gradient work; returns None (and grad_input is None)."""
        if need_grad_input is not True and need_grad_input is not False:
            need_grad_input = check.flag(
                f"{self.describe()}.backward", "need_grad_input", need_grad_input
            )
        check_backward_pairing(self)
        rt = self._runtime
        if rt is None:
            from .runtime import runtime_of

            rt = runtime_of(self)
        steady = rt.steady  # (Runtime.backward's steady case inlined: nn.steady)
        if steady is not None:
            grad_input = steady.backward(input, grad_output, need_grad_input)
            if grad_input is not steady.MISS:  # (MISS: the general path)
                return grad_input
        return rt.backward(input, grad_output, need_grad_input=need_grad_input)

    forward.steady_entry = backward.steady_entry = True  # (locking.locked_method)

    def locked(self):
        """A context manager holding this module's tree locks (re-entrant): wrap a sequence of
        calls that must not interleave with other threads' calls on the model, e.g.
        `with model.locked(): model.forward(x); model.backward(x, g)`."""
        return tree_locked(self)

    def zero_grad_parameters(self) -> None:
        cached = self.__dict__.get("_storage_cache")  # (_storage's common case inlined)
        for _, grad in cached[1] if cached and cached[0] == STORAGE_VERSION[0] else self._storage():
            grad.fill(0)

    def update_parameters(self, lr: float) -> None:
        if type(lr) is not float or not math.isfinite(lr):  # (the checks' message otherwise)
            lr = check.number(f"{self.describe()}.update_parameters", "lr", lr)
        for data, grad in self._storage():
            subtract_scaled(data, grad, lr)

    def _storage(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """`packing.storage(self.parameters())`, cached until anything changes which arrays
        the parameters are (packing.VERSION): walking the tree cost more than the update."""
        cached = self.__dict__.get("_storage_cache")
        if cached is not None and cached[0] == STORAGE_VERSION[0]:
            return cached[1]
        version = STORAGE_VERSION[0]
        arrays = storage(self.parameters())
        self.__dict__["_storage_cache"] = (version, arrays)
        return arrays

    def flatten_parameters(self) -> Module:
        """Store each module's parameters of one dtype and trailing shape as rows of one array
        again (`p.data`/`p.grad` become views of it). Modules do this when they create their
        parameters; call it after rebinding `p.data = ...` to regain the fast path (a rebound
        parameter still works, its block is just copied per call). See `nn.packing`."""
        for m in self.modules():
            pack_module(m)
        return self

    def training(self) -> Module:
        for m in self.modules():
            if not m.is_training:
                m.is_training = True
                m._mode_changed()
        return self

    def evaluate(self) -> Module:
        for m in self.modules():
            if m.is_training:
                m.is_training = False
                m._mode_changed()
        return self

    def _mode_changed(self) -> None:
        """Hook: Sequencer and recurrent modules forget when the mode switches."""

    def _before_forward(self) -> None:
        """Hook run on every module before the outermost forward traces or runs."""

    _before_forward.does_nothing = True  # (the runtime calls only the hooks that do something)

    def _initial_state_arrays(self) -> tuple[np.ndarray, ...] | None:
        return None  # recurrent modules: the state the next forward starts from

    def forget(self) -> Module:
        """Drop recurrent state, step history and user-set initial states (recursively)."""
        self._clear_memory(keep_initial=False)
        return self

    def max_bptt_step(self, rho: int | None) -> Module:
        """Set `rho` (steps of history kept for step-wise BPTT) on every recurrent module inside.
        Torch7: Module:maxBPTTstep."""
        for child in self._children.values():
            child.max_bptt_step(rho)
        return self

    def _clear_memory(self, keep_initial: bool) -> None:
        """What forget does; a Sequencer's automatic forget keeps user-set initial states."""
        if self._runtime is not None:
            self._runtime.history = []
            self._runtime.dropped = 0
        for child in self._children.values():
            child._clear_memory(keep_initial)

    def reinforce(self, reward: Any) -> Module:
        """Give `reward` to every REINFORCE module inside (e.g. ReinforceNormal) for the next
        backward: an array with one reward per sample (or one for the batch), or a list with one
        such array per step.  Torch7: dpnn's Module:reinforce(reward)."""
        for child in self._children.values():
            child.reinforce(reward)
        return self

    def reset(self, stdv: float | None = None) -> Module:
        if stdv is not None:
            stdv = check.number(f"{self.describe()}.reset", "stdv", stdv, "non-negative")
        for m in self.modules():
            if m is not self and type(m).reset is not Module.reset:  # its own init (Seq* modules)
                m.reset(stdv)
                continue
            for p in m._params.values():
                reinitialise(p, stdv)
        return self

    def astype(self, dtype: Any) -> Module:
        """Convert parameters (and the computations of later calls) to `dtype`, float32 or
        float64 (Torch7's `:float()` / `:double()`)."""
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise DTypeError(f"{self.describe()}.astype: {dtype!r} is not a dtype") from None
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise DTypeError(
                f"{self.describe()}.astype: parameters must be float32 or float64, not {dtype.name}"
            )
        for m in self.modules():
            m._dtype = dtype
            for p in m._params.values():
                p.retype(dtype)  # (a shared one converts once)
            pack_module(m)
            _cast_state(m.__dict__, dtype)
        return self

    def float(self) -> Module:  # Torch7's module:float()
        return self.astype(np.float32)

    def double(self) -> Module:  # Torch7's module:double()
        return self.astype(np.float64)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters' data, then of the buffers' (NCEModule's Z: `buffers`)."""
        return state_of(self)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> Module:
        """Copy `state`'s arrays into the parameters and buffers, all checked before any is
        copied (serialization.load_state): a bad state dict leaves the model as it was."""
        return load_state(self, state)

    # ---- compilation controls ------------------------------------------------------------------

    def set_passes(self, passes: list | None) -> Module:
        """Use this pass list for this module's programs (None: the global default)."""
        from ..passes import check_passes

        self._passes = None if passes is None else check_passes(passes)
        if self._runtime is not None:
            self._runtime.clear()
        return self

    def set_plan_options(self, options: PlanOptions | None) -> Module:
        """Plan this module's programs with `options` (None: the production defaults); tests
        use small thresholds to reach the planner's paths for large models on small ones."""
        if options is not None and not isinstance(options, PlanOptions):
            raise ArgumentTypeError(
                f"{self.describe()}.set_plan_options takes a tapernn.PlanOptions or None, got"
                f" {type(options).__name__}"
            )
        self._plan_options = options
        if self._runtime is not None:
            self._runtime.clear()
        return self

    @property
    def graph(self):
        return None if self._runtime is None else self._runtime.last_graph()

    @property
    def compiled(self):
        return None if self._runtime is None else self._runtime.last_compiled()

    def compile_report(self):
        if self._runtime is None or self._runtime.last is None:
            raise no_program(self.describe())
        return self._runtime.last.report(self._runtime.most_steps)

    @property
    def trace_count(self) -> int:
        """How many times this module, used as the outermost one, traced its steps: every new
        input signature counts, except one a rolled loop serves by re-emitting its cached step
        template (a new sequence length T: nothing is traced again, nn.rolled)."""
        return 0 if self._runtime is None else self._runtime.trace_count

    # ---- display ---------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line, Torch7 style: `nn.Linear(5 -> 3)`."""
        return f"nn.{type(self).__name__}{self.extra_repr()}"

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:  # Torch7 / PyTorch: the tree of its children, named
        return tree(self)


lock_entry_points(Module)


def _contains_var(obj: Any) -> bool:
    if isinstance(obj, (list, tuple)):
        return any(_contains_var(o) for o in obj)
    return isinstance(obj, Var) or hasattr(obj, "__tapernn_var__")


check.NN_CLASSES.update(Module=Module, Parameter=Parameter)  # validation.module/parameters


def _cast_state(fields: dict, dtype: np.dtype) -> None:
    """As Torch7's :float(), the state a module continues from (remembered or set_initial_state)
    converts too: kept, it made numba's packed step GEMMs refuse the call and NumPy's first step
    mixed precision. (Pending set_grad_hidden_state gradients are cast where they are used.)"""
    for name in ("_state", "_user_initial"):
        if fields.get(name) is not None:
            fields[name] = tuple(np.asarray(a).astype(dtype, copy=False) for a in fields[name])
