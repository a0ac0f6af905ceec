"""The build context: what a module sees while the outermost `forward` traces the whole model —
parameter bindings, recurrent state threaded between steps, random masks, recorded fields.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import functional as F
from .. import tracing
from ..errors import ShapeError, StateError, TracingError
from ..tracing import Tape, Var, current_scope, current_step, step
from .step_draws import StepDraws

if TYPE_CHECKING:
    from typing_extensions import Self

    from .module import Module, Parameter

_BUILD: ContextVar[BuildContext | None] = ContextVar("tapernn_build", default=None)


def current_build(param: Parameter | None = None) -> BuildContext:
    ctx = _BUILD.get()
    if ctx is None and param is not None:  # (e.g. a cell's step run by tn.gradcheck)
        raise TracingError(
            f"parameter {param.name!r} is read outside a module's forward (in tn.trace or "
            f"tn.gradcheck?): pass its .data there as an input array, or check the module "
            f"with tapernn.testing.gradcheck_module"
        )
    if ctx is None:
        raise TracingError(
            "symbolic module calls only happen inside a traced forward: call module.forward(x)"
        )
    return ctx


def _wrong_state_shape(module: Any, k: int, got: tuple, needed: tuple) -> None:
    at = f"{module.describe()} at {current_scope() or 'top'!r}"
    name = module._leaf_name(k)
    if module._state is None:  # the user's set_initial_state
        raise ShapeError(
            f"{at}: initial state {name!r} given to set_initial_state has shape "
            f"{got}, but this input needs {needed}"
        )
    raise StateError(
        f"{at}: remembered state {name!r} has shape {got} but this input needs "
        f"{needed}; call forget() when the batch size changes"
    )


@dataclass
class BuildContext:
    tape: Tape
    training: bool
    history_mode: bool = False  # stepping a bare recurrent module: its states are differentiated
    params: dict = field(default_factory=dict)  # Parameter -> Var
    param_order: list = field(default_factory=list)  # Parameters in input order
    # random inputs: (Node, p or draw(), rng), or a loop's (Node, StepDraws, site number)
    randoms: list = field(default_factory=list)
    drawn: int = 0  # per-step draws so far (names them: mask<k>; a loop's block counts n each)
    reinforce: list = field(default_factory=list)  # (module, step, Var) REINFORCE log-probs
    memos: dict = field(default_factory=dict)  # per_forward's: key -> dict
    states: dict = field(default_factory=dict)  # recurrent module -> tuple[Var]
    state_inputs: list = field(default_factory=list)  # (module, k, Node, user-set) fed at run time
    steps: dict = field(default_factory=dict)  # recurrent module -> steps traced
    probes: list = field(default_factory=list)  # (module, field, step, Var)
    scopes: dict = field(default_factory=dict)  # scope path -> module description
    aliases: list = field(default_factory=list)  # modules that record no op (diagrams)
    stack: list = field(default_factory=list)  # modules being built, outermost first
    step_mask: Any = None  # (B, 1) 0/1 while a Sequencer has lengths
    # a variant of a Sequencer program (nn.state_grads): each state passed from step t to t + 1
    # gets a zero "tap" input (its gradient: what step t + 1 sends back into the state of step
    # t), and for (module, t) in `cuts` the gradient from step t + 1 is stopped (it is replaced)
    taps: bool = False
    cuts: frozenset = frozenset()
    tap_inputs: list = field(default_factory=list)  # (module, t, k, Node)
    # rolled loops (nn.rolled): step templates by step signature (the runtime's, kept across
    # lengths), compile-report notes, whether this trace traced a step or only re-emitted
    # cached templates, and `unroll` (trace every step into the graph)
    templates: dict | None = None
    notes: list = field(default_factory=list)
    fresh_steps: bool = False
    reused: bool = False
    unroll: bool = False

    def __enter__(self) -> Self:
        self._token = _BUILD.set(self)
        self._weak = tracing._WEAK_ARRAYS.set(True)
        return self

    def __exit__(self, *exc: object) -> None:
        tracing._WEAK_ARRAYS.reset(self._weak)
        _BUILD.reset(self._token)

    # ---- modules ------------------------------------------------------------------------------

    def child_name(self, module: Module) -> str:
        if not self.stack:
            return ""
        parent = self.stack[-1]
        for name, child in parent.named_children():
            if child is module:
                return name
        return type(module).__name__

    def path(self) -> str:
        return current_scope()

    def note_alias(self, out: Any, last_id: int) -> None:
        """A leaf module that recorded no op (SelectTable picks a Var): diagrams still draw it.
        Kept as {"scope", "step", "outputs": node ids, "after": the last node id before it}."""
        leaves = out if isinstance(out, (list, tuple)) else [out]
        ids = [v.node.id for v in leaves if hasattr(v, "node")]
        if ids:
            self.aliases.append(
                {"scope": current_scope(), "step": current_step(), "outputs": ids, "after": last_id}
            )

    # ---- parameters and randomness -------------------------------------------------------------

    def bind(self, p: Parameter) -> Var:
        var = self.params.get(p)
        if var is None:
            owner = current_scope()
            name = f"{owner}.{p.name}" if owner else p.name
            with step(None):
                var = self.tape.input(p.data.shape, p.data.dtype, name=name, kind="param")
            self.params[p] = var
            self.param_order.append(p)
        return var

    def random_mask(
        self,
        shape: tuple[int, ...],
        p: float,
        dtype: np.dtype,
        rng: Any = None,
    ) -> Var:
        """A fresh dropout mask per call, drawn from `rng` (None: tapernn's global generator; a
        function: the generator it returns at each call, e.g. a module's current `rng`)."""
        var = self.tape.input(shape, dtype, name=f"mask{self.drawn}", kind="random")
        self.randoms.append((var.node, p, rng))
        self.drawn += 1
        return var

    def random_input(self, shape: tuple[int, ...], dtype: np.dtype, draw: Any, name: str) -> Var:
        """An input bound to a fresh `draw()` at every call (noise, samples): the program stays
        deterministic given its inputs, so backward sees the forward's draw."""
        var = self.tape.input(shape, dtype, name=f"{name}{self.drawn}", kind="random")
        self.randoms.append((var.node, draw, None))
        self.drawn += 1
        return var

    def step_randoms(self, sites: list, n: int, reverse: bool) -> list[Var]:
        """The (n, ...) inputs of a loop over n steps whose body draws `sites` (nn.rolled's
        RandomSite, in the step's order): row j of each is that site's draw at the loop's
        position j, all drawn at bind as the unrolled steps draw them (nn.step_draws), each
        named as the unrolled program names its first draw."""
        if not sites:
            return []
        group = StepDraws(sites, n, reverse, self.drawn)
        out = []
        for j, site in enumerate(sites):
            name = group.names(j)[0][1]
            var = self.tape.input((n,) + site.shape, site.dtype, name=name, kind="random")
            self.randoms.append((var.node, group, j))
            out.append(var)
        self.drawn += n * len(sites)
        return out

    def per_forward(self, key: str, why: str) -> dict:
        """A dict kept for the whole forward under `key`: values its steps share (NCE's Z,
        estimated at the first step). `why` names the need: a rolled loop's step, traced
        alone, has no such dict and runs unrolled saying it (nn.rolled)."""
        return self.memos.setdefault(key, {})

    def add_reinforce(self, module: Any, log_prob: Var) -> None:
        """Register `log_prob` (one per sample) of a REINFORCE module's stochastic choice: the
        backward seeds it with -reward (nn.reinforce), so the REINFORCE gradient is ordinary
        reverse mode through the same graph."""
        self.reinforce.append((module, current_step(), log_prob))

    # ---- recurrent state ---------------------------------------------------------------------

    def state_of(
        self, module: Any, shapes: list[tuple[int, ...]], dtype: np.dtype
    ) -> tuple[Var, ...]:
        if module in self.states:
            return self.states[module]
        stored = module._initial_state_arrays()
        if stored is None:
            state = tuple(F.zeros(s, dtype) for s in shapes)
        else:
            state = []
            for k, (arr, s) in enumerate(zip(stored, shapes)):
                if tuple(arr.shape) != tuple(s):
                    _wrong_state_shape(module, k, tuple(arr.shape), tuple(s))
                name = f"{current_scope() or 'state'}.{module._leaf_name(k, short=True)}0"
                var = self.tape.input(s, dtype, name=name, kind="state")
                user = module._state is None  # set_initial_state: its gradient is wanted
                self.state_inputs.append((module, k, var.node, user))
                state.append(var)
            state = tuple(state)
        self.states[module] = state
        return state

    def set_state(self, module: Any, state: tuple[Var, ...]) -> None:
        if self.taps:
            t = self.steps.get(module, 0) - 1
            cut = (module, t) in self.cuts
            tapped = []
            for k, s in enumerate(state):
                z = self.tape.input(
                    s.shape, s.dtype, name=f"{current_scope() or 'state'}.tap{k}", kind="tap"
                )
                self.tap_inputs.append((module, t, k, z.node))
                tapped.append((F.stop_gradient(s) if cut else s) + z)
            state = tuple(tapped)
        self.states[module] = state

    def next_step(self, module: Any) -> int:
        t = self.steps.get(module, 0)
        self.steps[module] = t + 1
        return t

    def probe(self, module: Any, name: str, t: int | None, value: Any) -> None:
        self.probes.append((module, name, t, value))
