"""Shared machinery for passes: building derived nodes that inherit step/scope/phase, loop
invariance, and `substitute`, which applies a node -> replacement map and re-sorts the tape.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import numpy as np

from ..errors import GraphError
from ..graph import Graph, Node
from ..keys import freeze  # noqa: F401 (freeze: passes import it from here)
from ..ops.registry import PSEUDO, get_op  # noqa: F401 (PSEUDO: passes import it from here)


def derive(like: Node, op: str, inputs: Iterable[Node], **attrs: Any) -> Node:
    """A new `op` node whose shape/dtype come from the op rules and whose step, scope and phase
    come from `like` (the node it replaces, or `spanning(...)` for work serving many steps)."""
    inputs = tuple(inputs)
    opdef = get_op(op)
    shape = tuple(opdef.shape(*[i.shape for i in inputs], **attrs))
    dtype = opdef.infer_dtype([i.dtype for i in inputs], attrs)
    node = Node(op, inputs, attrs, shape, dtype, step=like.step, scope=like.scope, phase=like.phase)
    node.verified = opdef.n_inputs is None or len(inputs) == opdef.n_inputs  # rules just ran
    return node


def input_like(like: Node, shape: tuple, name: str) -> Node:
    """A new graph input named `name` of `shape`, with `like`'s attrs (its kind), dtype, step,
    scope and phase: a stand-in for `like` (transposed, merged with its neighbours, ...)."""
    return Node(
        "input",
        (),
        dict(like.attrs),
        tuple(shape),
        like.dtype,
        step=like.step,
        scope=like.scope,
        phase=like.phase,
        name=name,
    )


def zeros_like_node(like: Node, shape: tuple | None = None, dtype: Any = None) -> Node:
    shape = like.shape if shape is None else tuple(shape)
    dtype = np.dtype(like.dtype if dtype is None else dtype)
    return Node(
        "zeros",
        (),
        {"shape": shape, "dtype": dtype.str},
        shape,
        dtype,
        step=like.step,
        scope=like.scope,
        phase=like.phase,
    )


def is_zero(n: Node) -> bool:
    if n.op == "zeros":
        return True
    return (
        n.op == "constant"
        and n.value is not None
        and n.value.dtype.kind in "fiub"
        and not np.any(n.value)
    )


def invariant_nodes(g: Graph) -> set[Node]:
    """Loop-level values (weights): inputs and constants outside any step, and what is computed
    from them outside any step or only by re-laying them out -- so transpose(W) made by step 3's
    VJP counts, while anything computed inside a step (the recurrent state) does not."""
    out: set[Node] = set()
    for n in g.nodes:
        if n.op == "input":
            if n.step is None:
                out.add(n)
        elif (n.step is None or (n.op != "constant" and get_op(n.op).layout)) and out.issuperset(
            n.inputs
        ):
            out.add(n)
    return out


def strip_transpose(n: Node) -> Node:
    return n.inputs[0] if n.op == "transpose" else n


def substitute(g: Graph, subst: dict[Node, Node]) -> Graph:
    """Replace every use of each key of `subst` by its value and return the new graph.

    Replacements may read any node of `g` (also ones later on the tape, as long as no cycle
    arises); the result is re-sorted topologically, keeping tape order wherever possible
    (Kahn's algorithm keyed by the original position; new nodes take their replaced node's).
    """
    if not subst:
        return g
    pos = {n: k for k, n in enumerate(g.nodes)}
    for old, new in subst.items():
        _give_positions(new, pos, pos[old])
    # nothing before the first replaced node changes, and (taking the least keys, reading only
    # each other) it stays the head of the new tape: only the rest is rewired and re-sorted --
    # most of the tape when a per-step value is replaced, a few nodes for a final gradient sum
    first = min(pos[old] for old in subst)
    head = g.nodes[:first]
    final: dict[Node, Node] = dict(zip(head, head))
    for n in g.nodes[first:]:
        if n in final:
            continue
        if n not in subst:
            try:  # the usual case: n's inputs come earlier on the tape, so they are final
                ins = tuple([final[i] for i in n.inputs])
            except KeyError:
                pass
            else:
                if ins == n.inputs:
                    final[n] = n
                else:
                    final[n] = new = n.with_inputs(ins)
                    pos[new] = pos[n]  # (a fresh node: what setdefault would do)
                continue
        _finalize(n, subst, final, pos)
    placed = set(head)
    rest = [x for x in dict.fromkeys([final[n] for n in g.nodes[first:]]) if x not in placed]
    nodes = head + _topological(rest, pos, placed)
    # replaced nodes' old operands may be dead now; later rewrites count users, so drop them
    return Graph(
        nodes, [final[n] for n in g.inputs], [final[n] for n in g.outputs], g.meta
    ).eliminate_dead_code()


def _give_positions(new: Node, pos: dict[Node, float], at: float) -> None:
    stack = [new]
    while stack:
        n = stack.pop()
        if n in pos:
            continue
        pos[n] = at - 0.5  # helpers sort just before the node they serve
        stack.extend(n.inputs)


def _finalize(
    root: Node, subst: dict[Node, Node], final: dict[Node, Node], pos: dict[Node, float]
) -> Node:
    """final(x): x with substitutions applied to it and (transitively) to its inputs."""
    stack = [root]
    expanded: set[Node] = set()  # expanded but not final: on the DFS path ("grey")
    while stack:
        x = stack[-1]
        if x in final:
            stack.pop()
            continue
        target = subst.get(x, x)
        todo = [target] if target is not x else [i for i in x.inputs if i not in final]
        todo = [t for t in todo if t not in final]
        if todo and x not in expanded:
            if any(t in expanded for t in todo):
                raise GraphError(f"substitution makes {x!r} depend on itself")
            expanded.add(x)
            stack.extend(todo)
            continue
        if target is not x:
            final[x] = final[target]
        else:
            ins = tuple([final[i] for i in x.inputs])
            new = x if ins == x.inputs else x.with_inputs(ins)
            pos.setdefault(new, pos[x])
            final[x] = new
        stack.pop()
    return final[root]


def _topological(
    nodes: list[Node], pos: dict[Node, float], placed: set[Node] | None = None
) -> list[Node]:
    """`nodes` (and the unlisted nodes they read) in topological order, after `placed` (nodes
    already on the tape, with lesser keys than any of these)."""
    order = list(nodes)
    placed = set() if placed is None else placed
    present = set(order) | placed
    # nodes reachable from kept ones but not listed (new helper nodes) join the tape too
    stack = list(order)
    while stack:
        x = stack.pop()
        if present.issuperset(x.inputs):  # (most nodes: nothing to add)
            continue
        for i in x.inputs:
            if i not in present:
                present.add(i)
                order.append(i)
                stack.append(i)
    # Kahn's algorithm popping the least (position, listing order) among ready nodes, run along
    # the sorted list: most nodes are ready when their turn comes and go straight out; only the
    # ones met before their inputs wait (counting their missing inputs) in a heap
    keyed = sorted([(pos.get(n, 0.0), k) for k, n in enumerate(order)])
    out: list[Node] = []
    emitted = placed  # (it is this function's to extend)
    missing: dict[int, int] = {}  # waiting node's listing index -> inputs not yet emitted
    waiters: dict[Node, list[tuple[float, int]]] = {}
    ready: list[tuple[float, int]] = []  # heap of waiting nodes whose inputs are all out
    j, count = 0, len(keyed)
    while True:
        if not ready:  # the next ready node in sorted order goes out, until one frees others
            while j < count:
                n = order[keyed[j][1]]
                if n in waiters or not emitted.issuperset(n.inputs):
                    break
                emitted.add(n)
                out.append(n)
                j += 1
        while j < count:
            n = order[keyed[j][1]]
            if emitted.issuperset(n.inputs):
                break
            absent = [i for i in dict.fromkeys(n.inputs) if i not in emitted]
            missing[keyed[j][1]] = len(absent)
            for i in absent:
                waiters.setdefault(i, []).append(keyed[j])
            j += 1
        if ready and (j == count or ready[0] < keyed[j]):
            n = order[heapq.heappop(ready)[1]]
        elif j < count:
            n = order[keyed[j][1]]
            j += 1
        else:
            break
        emitted.add(n)
        out.append(n)
        for key in waiters.pop(n, ()) if waiters else ():
            missing[key[1]] -= 1
            if not missing[key[1]]:
                heapq.heappush(ready, key)
    return out


def spanning(like: Node) -> Node:
    """A tag template for nodes that serve many steps at once (stacks, hoisted matmuls)."""
    return Node(
        like.op,
        (),
        like.attrs,
        like.shape,
        like.dtype,
        step=None,
        scope=like.scope,
        phase=like.phase,
    )


def is_matmul_2d(n: Node) -> bool:
    return n.op == "matmul" and n.inputs[0].ndim == 2 and n.inputs[1].ndim == 2


def accept_independent(g: Graph, groups: dict[Any, list[Node]], needs) -> dict[Any, list[Node]]:
    """Keep, per group, the members (in tape order) whose `needs(member)` operands do not depend
    on an already accepted member of the same group, so that one node computing the whole group
    can be placed without creating a cycle -- nor a cycle through other groups: a member whose
    operands read group H's members makes the merged group depend on merged H, and is refused
    when merged H already depends on its group (step(x, a, b) = (b@W1 + x, a@W2): a_1 = b_0@W1
    feeds a_1@W2 while b_1 = a_0@W2 feeds b_1@W1). One sweep with per-node group bitmasks."""
    bit_of: dict[Node, int] = {}
    key_of: dict[Node, Any] = {}
    index_of: dict[Node, int] = {}
    for k, (key, members) in enumerate(groups.items()):
        for m in members:
            bit_of[m], key_of[m], index_of[m] = 1 << k, key, k
    taint: dict[Node, int] = {}
    accepted: dict[Any, list[Node]] = {key: [] for key in groups}
    after = [0] * len(groups)  # per group: the groups its merged node depends on (closed)
    for n in g.nodes:
        t = 0
        for i in n.inputs:
            t |= taint.get(i, 0)
        bit = bit_of.get(n)
        if bit is not None:
            deps = 0
            for o in needs(n):
                deps |= taint.get(o, 0)
            if not deps & bit and _add_group_edges(after, index_of[n], deps):
                accepted[key_of[n]].append(n)
                t |= bit
        if t:
            taint[n] = t
    return {key: ms for key, ms in accepted.items() if len(ms) >= 2}


def _add_group_edges(after: list[int], k: int, deps: int) -> bool:
    """Record that group k's merged node reads groups `deps` (a bitmask), keeping `after`
    transitively closed; False (nothing recorded) if that would close a cycle."""
    new = deps & ~after[k]
    if not new:
        return True
    closure = deps | after[k]
    rest = new
    while rest:
        low = rest & -rest
        closure |= after[low.bit_length() - 1]
        rest ^= low
    if closure >> k & 1:
        return False
    after[k] = closure
    bit = 1 << k
    for j, a in enumerate(after):
        if a & bit:
            after[j] = a | closure
    return True


def read_once(g: Graph) -> Callable[[Node], bool]:
    """A test for values read exactly once on the tape and not graph outputs: for an operand t
    of n, `read_once(g)(t)` == `n.inputs.count(t) == 1 and sole_use(g.users(), t, n, g)`,
    from one count over the tape (in C) instead of a users map."""
    counts = Counter(chain.from_iterable([n.inputs for n in g.nodes]))
    outputs = set(g.outputs)
    return lambda t: counts[t] == 1 and t not in outputs


def sole_use(users: dict[Node, list[Node]], n: Node, reader: Node, g: Graph) -> bool:
    return all(u is reader for u in users.get(n, ())) and n not in g.outputs
