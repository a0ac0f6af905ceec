"""The graph IR: `Node` (one op application, tagged with step, scope and phase) and `Graph`.

A Graph is a tape: nodes in the order they were recorded, which is always a topological order.
Nodes are immutable once made; passes build new graphs (see `Graph.rebuild`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import views
from .errors import GraphError, ShapeError
from .keys import freeze
from .ops.registry import REGISTRY

if TYPE_CHECKING:
    import networkx as nx

_ids = itertools.count()


_PLAIN_FIELDS = frozenset({"op", "step", "scope", "phase", "name", "value"})
_REWIRING = frozenset({"inputs", "step", "scope", "phase"})


class Node:
    """One value in a graph: `op` applied to `inputs` with `attrs`.

    `step` is the timestep the node belongs to (None outside any unrolled loop), `scope` the
    dotted module path that created it, `phase` "forward" or "backward". Input nodes carry
    `attrs["kind"]` ("data", "param", "state", "random", "seed") and a `name`; constant nodes carry
    `value`.
    """

    __slots__ = (
        "__weakref__",
        "_attrs_key",
        "attrs",
        "dtype",
        "id",
        "inputs",
        "name",
        "op",
        "phase",
        "scope",
        "shape",
        "step",
        "value",
        "verified",
    )

    def __init__(
        self,
        op: str,
        inputs: Iterable[Node],
        attrs: dict | None,
        shape: tuple,
        dtype: Any,
        step: int | None = None,
        scope: str = "",
        phase: str = "forward",
        name: str | None = None,
        value: np.ndarray | None = None,
    ):
        self.id = next(_ids)
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs or {})
        self.shape = tuple(map(int, shape))
        self.dtype = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
        self.step = step
        self.scope = scope
        self.phase = phase
        self.name = name
        self.value = value
        self.verified = False  # passed its op's shape/dtype rules (verify); nodes never mutate
        self._attrs_key = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def kind(self) -> str | None:
        return self.attrs.get("kind") if self.op == "input" else None

    @property
    def attrs_key(self) -> Any:
        """`freeze(attrs)`, computed once per node (nodes never mutate): CSE and grouping keys."""
        key = self._attrs_key
        if key is None:
            key = self._attrs_key = freeze(self.attrs)
        return key

    def with_inputs(self, inputs: tuple[Node, ...]) -> Node:
        """`replace(inputs=inputs)` for a tuple: the passes' hot path (every node downstream of
        a rewrite is rebuilt this way), so it sets the fields in one go."""
        new = _new_node(Node)
        new.id = next(_ids)
        (
            new.op,
            new.inputs,
            new.attrs,
            new.shape,
            new.dtype,
            new.step,
            new.scope,
            new.phase,
            new.name,
            new.value,
            new._attrs_key,
        ) = (
            self.op,
            inputs,
            self.attrs,
            self.shape,
            self.dtype,
            self.step,
            self.scope,
            self.phase,
            self.name,
            self.value,
            self._attrs_key,
        )
        new.verified = self.verified and _same_types(inputs, self.inputs)
        return new

    def replace(self, **changes: Any) -> Node:
        """A new node equal to this one but for `changes` (op, inputs, attrs, ...)."""
        if len(changes) == 1 and "inputs" in changes:
            return self.with_inputs(tuple(changes["inputs"]))
        # copies the fields directly; only changed ones are normalised as __init__ would
        new = _new_node(Node)
        new.id = next(_ids)
        new.op, new.inputs, new.attrs, new.shape, new.dtype = (
            self.op,
            self.inputs,
            self.attrs,
            self.shape,
            self.dtype,
        )
        new.step, new.scope, new.phase, new.name, new.value = (
            self.step,
            self.scope,
            self.phase,
            self.name,
            self.value,
        )
        new._attrs_key = self._attrs_key
        for name, v in changes.items():
            if name == "inputs":
                v = tuple(v)
            elif name == "attrs":
                v = dict(v or {})
                new._attrs_key = None
            elif name == "shape":
                v = tuple(int(s) for s in v)
            elif name == "dtype":
                v = np.dtype(v)
            elif name not in _PLAIN_FIELDS:
                raise TypeError(f"Node.replace() got an unexpected field {name!r}")
            setattr(new, name, v)
        # rewiring to inputs of the same shapes and dtypes keeps the op rules satisfied: passes
        # rebuild every node downstream of a rewrite this way, and re-checking them all made
        # verify() a third of compile time
        new.verified = (
            self.verified and changes.keys() <= _REWIRING and _same_types(new.inputs, self.inputs)
        )
        return new

    def __repr__(self) -> str:
        return f"<Node {self.op} {self.shape} {self.dtype} id={self.id}>"


_new_node = Node.__new__


def _same_types(new: tuple, old: tuple) -> bool:
    """Rewiring a verified node to inputs of the same shapes and dtypes keeps its op rules
    satisfied (re-checking every rebuilt node was a third of compile time)."""
    if len(new) != len(old):
        return False
    for a, b in zip(new, old):
        if a is not b and (a.shape != b.shape or a.dtype != b.dtype):
            return False
    return True


@dataclass(frozen=True)
class GraphMeta:
    """What stages after tracing know about a graph's interface (immutable: change it with
    `dataclasses.replace`, so graphs sharing one never see each other's changes).

    single_output: traced from a function returning one Var (a Compiled returns it bare).
    output_names: one per output (seed inputs of `grad` are named after them).
    n_forward_outputs: the first outputs that are the forward's (`grad`, a split forward).
    wrt, seeds: the names of the inputs `grad` differentiated for, and of its seed inputs.
    saved_outputs: in a split forward, the positions of the values saved for backward.
    saved_names, seed_names, input_names: a split backward's inputs, in that order.
    outputs_may_alias_inputs: positions of outputs returned as views of an input (not copied).
    scopes: scope path -> module description (diagrams); root: the traced module's.
    aliases: modules that record no op (SelectTable, Identity), for module-level diagrams.
    units: scopes module-level diagrams draw as one box per step with everything inside them
    (recurrent modules: a FastLSTM's Linear children and gates; MaskZero and its module).
    """

    single_output: bool = False
    output_names: tuple[str, ...] = ()
    n_forward_outputs: int | None = None
    wrt: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ()
    saved_outputs: tuple[int, ...] | None = None
    saved_names: tuple[str, ...] = ()
    seed_names: tuple[str, ...] = ()
    input_names: tuple[str, ...] = ()
    outputs_may_alias_inputs: tuple[int, ...] = ()
    scopes: Mapping[str, str] = field(default_factory=dict)
    root: str = ""
    aliases: tuple = ()
    units: tuple[str, ...] = ()


class Graph:
    """A tape of nodes with designated inputs and outputs; `meta` (GraphMeta) describes its
    interface for the stages after tracing."""

    def __init__(
        self,
        nodes: list[Node] | None = None,
        inputs: list[Node] | None = None,
        outputs: list[Node] | None = None,
        meta: GraphMeta | None = None,
    ):
        self.nodes: list[Node] = list(nodes or [])
        self.inputs: list[Node] = list(inputs or [])
        self.outputs: list[Node] = list(outputs or [])
        self.meta: GraphMeta = meta if meta is not None else GraphMeta()

    # ---- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def users(self) -> dict[Node, list[Node]]:
        """Map each node to the nodes that read it (in tape order, once per use)."""
        out: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                try:
                    out[i].append(n)
                except KeyError:  # a value read but not on the tape (a broken graph)
                    out[i] = [n]
        return out

    def input_named(self, name: str) -> Node:
        for n in self.inputs:
            if n.name == name:
                return n
        raise KeyError(
            f"graph has no input named {name!r}; inputs: {[n.name for n in self.inputs]}"
        )

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def steps(self) -> list[int]:
        return sorted({n.step for n in self.nodes if n.step is not None})

    def copy(self) -> Graph:
        return Graph(self.nodes, self.inputs, self.outputs, self.meta)

    # ---- rewriting ----------------------------------------------------------------------------

    def rebuild(self, fn: Callable[[Node, dict[Node, Node]], Node | None]) -> Graph:
        """A new graph made by visiting nodes in tape order (this graph itself when every node
        maps to itself, so a pass that changed nothing returns its input).

        `fn(node, mapping)` returns the replacement for `node` (which may be a new node built from
        `mapping[input]`, or an already-mapped node) or None to keep `node` with remapped inputs.
        """
        mapping: dict[Node, Node] = {}
        nodes: list[Node] = []
        seen: set[Node] = set()
        changed = False
        for n in self.nodes:
            new = fn(n, mapping)
            if new is None:
                ins = tuple([mapping.get(i, i) for i in n.inputs])
                new = n if ins == n.inputs else n.with_inputs(ins)
            mapping[n] = new
            if new is not n:
                changed = True
            if new not in seen:
                if seen.issuperset(new.inputs):  # the usual case: inputs are on the tape already
                    seen.add(new)
                    nodes.append(new)
                else:
                    _append_with_missing(new, nodes, seen)
        if not changed:
            return self
        return Graph(
            nodes,
            [mapping.get(n, n) for n in self.inputs],
            [mapping.get(n, n) for n in self.outputs],
            self.meta,
        )

    def eliminate_dead_code(self) -> Graph:
        """The graph without nodes no output depends on (this graph itself when there are none)."""
        live = set(self.outputs) | set(self.inputs)
        for n in reversed(self.nodes):
            if n in live:
                live.update(n.inputs)
        kept = [n for n in self.nodes if n in live]
        if len(kept) == len(self.nodes):
            return self
        return Graph(kept, self.inputs, self.outputs, self.meta)

    # ---- checks and views ---------------------------------------------------------------------

    def verify(self) -> None:
        """Raise GraphError unless the graph is well formed.

        Checks: topological order, no dangling inputs, no duplicates, every op registered, every
        node's shape and dtype equal to what its op's rules give for its inputs (once per node:
        `Node.verified`; a verified node's placement is still checked in every graph).
        """
        placed: set[Node] = set()
        inputs = set(self.inputs)
        for k, n in enumerate(self.nodes):
            if n in placed:
                raise GraphError(f"{_where(k, n)} appears twice on the tape")
            if not placed.issuperset(n.inputs):
                i = next(i for i in n.inputs if i not in placed)
                raise GraphError(
                    f"{_where(k, n)} reads a value that is not earlier on the tape: {i!r}"
                )
            if n.op == "input":
                if n not in inputs:
                    raise GraphError(f"{_where(k, n)} is an input node but not in graph.inputs")
            elif n.verified:
                pass
            elif n.op == "constant":
                if n.value is None or tuple(n.value.shape) != n.shape:
                    raise GraphError(
                        f"{_where(k, n)}: constant value does not match shape {n.shape}"
                    )
            else:
                _check_op_node(n, k)
                n.verified = True
            placed.add(n)
        for n in self.inputs:
            if n not in placed or n.op != "input":
                raise GraphError(f"graph input {n!r} is not an input node on the tape")
        for n in self.outputs:
            if n not in placed:
                raise GraphError(f"graph output {n!r} is not on the tape")

    def numbering(self) -> dict[Node, int]:
        return {n: k for k, n in enumerate(self.nodes)}

    def to_networkx(self) -> nx.MultiDiGraph:
        """A networkx MultiDiGraph: node keys are tape positions, edges carry the argument index."""
        return views.to_networkx(self)

    def __str__(self) -> str:
        return views.format_graph(self)

    def __repr__(self) -> str:
        return (
            f"<Graph {len(self.nodes)} nodes, {len(self.inputs)} inputs, "
            f"{len(self.outputs)} outputs>"
        )


def _where(k: int, n: Node) -> str:
    # built only when reporting: formatting it for every node was a large share of verify()
    return f"node %{k} ({n.op}, scope {n.scope!r}, step {n.step})"


def _append_with_missing(node: Node, nodes: list[Node], seen: set[Node]) -> None:
    """Append `node` after any of its (transitive) inputs not yet on the new tape."""
    stack = [(node, iter(node.inputs))]
    while stack:
        n, it = stack[-1]
        for i in it:
            if i not in seen:
                stack.append((i, iter(i.inputs)))
                break
        else:
            stack.pop()
            if n not in seen:
                seen.add(n)
                nodes.append(n)


def _check_op_node(n: Node, k: int) -> None:
    op = REGISTRY.get(n.op)
    if op is None:
        raise GraphError(f"{_where(k, n)}: op {n.op!r} is not registered")
    if op.n_inputs is not None and len(n.inputs) != op.n_inputs:
        raise GraphError(f"{_where(k, n)}: takes {op.n_inputs} inputs, has {len(n.inputs)}")
    try:
        shape = tuple(op.shape(*[i.shape for i in n.inputs], **n.attrs))
        dtype = op.infer_dtype([i.dtype for i in n.inputs], n.attrs)
    except ShapeError as e:
        raise GraphError(f"{_where(k, n)}: {e}") from None
    if shape != n.shape:
        raise GraphError(f"{_where(k, n)}: recorded shape {n.shape}, but its inputs give {shape}")
    if dtype != n.dtype:
        raise GraphError(f"{_where(k, n)}: recorded dtype {n.dtype}, but its inputs give {dtype}")
