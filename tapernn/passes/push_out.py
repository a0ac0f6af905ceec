"""Scan push-out (Theano's scan_push_out_non_seq / _seq, XLA's while-loop invariant code
motion): in a `scan`'s body, work on the invariants alone leaves the loop (computed once, a new
invariant), and work on the xs and invariants alone leaves it time-batched over the stacked xs
(the LSTM input projection x_t @ W: one GEMM over the (T*B, D) view), a new xs. GEMMs after
the loop: push_out_grads.py (parameter gradients), push_out_ys.py (returned products)."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from ..graph import Graph, Node
from ..ops.registry import get_op
from .push_out_grads import accumulations_out, grad_recipe
from .push_out_ys import products_out, ys_recipe
from .rewrite import derive, substitute


@dataclass(frozen=True)
class Recipe:
    """How one body is pushed out: `outside` (body nodes computed outside, in tape order, with
    their mode "x" = time-batched or "i" = once), the new body, and its inputs' origins: for
    each new body input, the old body node it stands for."""

    outside: tuple[tuple[Node, str], ...]
    body: Graph
    origins: tuple[Node, ...]
    n_xs: int


_RECIPES: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()
_VIEWS = ("getitem", "reshape", "transpose")
_REDUCTIONS = ("max",)  # (exact in any order: the same bits time-batched; MaskZero's row test)


def push_out_of_loops(graph: Graph) -> Graph:
    """Every scan whose body has loop-invariant or time-parallel work: that work outside;
    accumulations of per-step products (parameter cotangents) and returned products q_t @ W:
    one GEMM after the loop."""
    graph = _each_scan(graph, grad_recipe, accumulations_out)
    graph = _each_scan(graph, ys_recipe, products_out)
    return _each_scan(graph, recipe_for, lambda graph, s, recipe: {s: _apply(s, recipe)})


def _each_scan(graph: Graph, find, rewrite) -> Graph:
    """`graph` with every scan node whose body `find(body, n_carry, n_xs)` gives a recipe for
    rewritten by `rewrite(graph, node, recipe)` (a substitution dict)."""
    subst: dict[Node, Node] = {}
    for n in graph.nodes:
        if n.op == "scan" and (find is recipe_for or not n.attrs.get("shifted")):
            # (a shifted slab's ys stay as they are: only the xs-side push-out keeps them)
            recipe = find(n.attrs["body"], n.attrs["n_carry"], n.attrs["n_xs"])
            if recipe is not None:
                subst.update(rewrite(graph, n, recipe))
    return substitute(graph, subst) if subst else graph


def recipe_for(body: Graph, n_carry: int, n_xs: int) -> Recipe | None:
    """The push-out of `body`, made once per body Graph (the new body is then the same object
    in every compile: its compiled program is cached)."""
    cache = _RECIPES.setdefault(body, {})
    key = (n_carry, n_xs)
    if key not in cache:
        cache[key] = _make_recipe(body, n_carry, n_xs)
    return cache[key]


def _batchable(n: Node, mode: dict[Node, str]) -> bool:
    """Can `n` (reading at least one time-batched value) be computed over the stacked xs?"""
    ins = [mode.get(i) for i in n.inputs]
    if any(m is None for m in ins):
        return False
    op = get_op(n.op)
    if n.op == "matmul":
        a, b = n.inputs
        return ins == ["x", "i"] and b.ndim == 2 and a.ndim >= 2
    if n.op in _VIEWS:
        return not (
            n.op == "getitem"
            and any(isinstance(k, tuple) and k[0] == "a" for k in n.attrs["index"])
        )
    if op.elementwise:
        return all(i.shape == n.shape for i, m in zip(n.inputs, ins) if m == "x") and all(
            i.ndim <= n.ndim for i in n.inputs
        )
    return n.op in _REDUCTIONS  # (over the stacked xs: its axes + 1)


def _make_recipe(body: Graph, nc: int, nx: int) -> Recipe | None:
    mode: dict[Node, str] = {}  # "x": time-batched outside, "i": once outside
    for k, i in enumerate(body.inputs):
        if k >= nc:
            mode[i] = "x" if k < nc + nx else "i"
    outside = []
    for n in body.nodes:
        if n.op == "input":
            continue
        if n.op == "constant":
            mode[n] = "i"
            continue
        ins = [mode.get(i) for i in n.inputs]
        if None in ins:
            continue
        if "x" not in ins:
            mode[n] = "i"
            outside.append((n, "i"))
        elif _batchable(n, mode):
            mode[n] = "x"
            outside.append((n, "x"))
    worth = any(n.op == "matmul" and m == "x" for n, m in outside) or any(
        m == "i" and n.op not in _VIEWS and n.op != "zeros" for n, m in outside
    )
    if not worth:
        return None
    return _new_body(body, nc, nx, mode, tuple(outside))


def _new_body(
    body: Graph, nc: int, nx: int, mode: dict[Node, str], outside: tuple[tuple[Node, str], ...]
) -> Recipe:
    moved = {n for n, _ in outside}
    kept = [
        n
        for n in body.nodes
        if n.op != "input"
        and n not in moved
        and not (n.op == "constant" and n not in _read_by(body, moved))
    ]
    read = {i for n in kept for i in n.inputs} | set(body.outputs)
    frontier = [n for n, _ in outside if n in read]
    old_x = [i for i in body.inputs[nc : nc + nx] if i in read]
    old_i = [i for i in body.inputs[nc + nx :] if i in read]
    new_x = [n for n in frontier if mode[n] == "x"]
    new_i = [n for n in frontier if mode[n] == "i"]
    stand_in: dict[Node, Node] = {}
    for k, n in enumerate(new_x + new_i):
        stand_in[n] = Node(
            "input",
            (),
            {"kind": "data" if mode[n] == "x" else "param"},
            n.shape,
            n.dtype,
            step=n.step,
            scope=n.scope,
            phase=n.phase,
            name=f"pushed{k}_{n.op}",
        )
    origins = tuple(body.inputs[:nc]) + tuple(old_x + new_x + old_i + new_i)
    inputs = [stand_in.get(o, o) for o in origins]
    nodes: list[Node] = list(inputs)
    env: dict[Node, Node] = dict(stand_in)
    for n in kept:
        ins = tuple(env.get(i, i) for i in n.inputs)
        env[n] = n if ins == n.inputs else n.with_inputs(ins)
        nodes.append(env[n])
    outputs = [env.get(o, o) for o in body.outputs]
    new = Graph(nodes, inputs, outputs, body.meta)
    new.verify()
    return Recipe(outside, new, origins, len(old_x) + len(new_x))


def _read_by(body: Graph, moved: set[Node]) -> set[Node]:
    """Constants read by nodes that stay in the body (or returned by it)."""
    out = {i for n in body.nodes if n not in moved for i in n.inputs if i.op == "constant"}
    return out | {o for o in body.outputs if o.op == "constant"}


def _apply(s: Node, recipe: Recipe) -> Node:
    """The scan node `s` with its recipe's work outside: the new scan node (same slab)."""
    a = s.attrs
    body, nc, length = a["body"], a["n_carry"], a["length"]
    env: dict[Node, Node] = dict(zip(body.inputs, s.inputs))
    for n, m in recipe.outside:
        ins = [_outer(i, env, s) for i in n.inputs]
        # the loop's step and phase, the moved node's scope: a failure names the module that
        # recorded it (a Repeater's LookupTable, not the Repeater); no kernel key reads scopes
        like = SimpleNamespace(step=s.step, scope=n.scope, phase=s.phase)
        env[n] = _batched(like, n, ins, length) if m == "x" else derive(like, n.op, ins, **n.attrs)
    ins = [_outer(o, env, s) for o in recipe.origins]
    return derive(
        s,
        "scan",
        ins,
        body=recipe.body,
        n_carry=nc,
        n_xs=recipe.n_xs,
        length=length,
        reverse=a["reverse"],
        **({"shifted": a["shifted"]} if a.get("shifted") else {}),  # (the same ys)
    )


def _outer(i: Node, env: dict[Node, Node], s: Node) -> Node:
    if i not in env:  # a body constant read outside
        env[i] = Node(
            "constant",
            (),
            {},
            i.shape,
            i.dtype,
            step=s.step,
            scope=s.scope,
            phase=s.phase,
            value=i.value,
        )
    return env[i]


def _batched(like: Any, n: Node, ins: list[Node], length: int) -> Node:
    """`n` over the stacked xs: its inputs' time-batched values are (length, *shape); the new
    nodes take `like`'s step, scope and phase."""
    if n.op == "matmul":
        a, w = ins
        rows = derive(
            like,
            "reshape",
            (a,),
            shape=(length * math.prod(n.inputs[0].shape[:-1]), n.inputs[0].shape[-1]),
        )
        product = derive(like, "matmul", (rows, w))
        return derive(like, "reshape", (product,), shape=(length, *n.shape))
    if n.op == "reshape":
        return derive(like, "reshape", ins, shape=(length, *n.shape))
    if n.op == "transpose":
        return derive(like, "transpose", ins, axes=(0, *[k + 1 for k in n.attrs["axes"]]))
    if n.op == "getitem":
        return derive(like, "getitem", ins, index=(("s", None, None, None), *n.attrs["index"]))
    if n.op in _REDUCTIONS:
        axis = tuple(a + 1 for a in n.attrs["axis"])
        return derive(like, n.op, ins, axis=axis, keepdims=n.attrs["keepdims"])
    return derive(like, n.op, ins, **n.attrs)
