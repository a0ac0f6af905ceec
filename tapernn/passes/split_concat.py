"""Concatenated GEMM operands split by parts (issue 19; API.md section 3's MGU): in a scan's
body, `concat([x, h], axis=-1) @ W` becomes `x @ W[:D] + h @ W[D:]` (W a loop invariant; each
block of rows a new invariant, a view of W made outside the loop) where the parts mix
time-parallel values (the step's input: push_out_of_loops then makes its product ONE GEMM over
the stacked xs) and values of the carries (the recurrent step GEMM, which the numba backend
packs and the batch split runs on two threads). `W @ concat([a, b], axis=0)` likewise by
columns of W. A concat of parts all on one side is left alone (one GEMM stays one GEMM). In a
loop differentiated before the split (tn.grad, then compile), its backward `dz @ W^T` read by
column slices some of which feed the carries (dh) and some not (dx) becomes one product per
slice over W's row blocks: dx's then leaves the loop (push_out_ys).

The nn runtime runs this on a Sequencer's traced graph before `grad` too (with the layout
choice, when the pass is in the pipeline): the backward is then derived from the split forward
-- the input gradient's product leaves the reverse loop, and W's gradient is the two blocks'
products, each written into its rows of one concatenated buffer."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ..graph import Graph, Node
from .rewrite import derive, input_like, substitute


@dataclass(frozen=True)
class Split:
    """A body rewritten: the new body, and per new invariant input (body input position of
    the weight it is a block of, getitem index of the block)."""

    body: Graph
    blocks: tuple[tuple[int, tuple], ...]


_CACHE: weakref.WeakKeyDictionary[Graph, dict] = weakref.WeakKeyDictionary()


def split_concat_matmuls(graph: Graph) -> Graph:
    """Every scan whose body multiplies a concat of time-parallel and carried parts by a loop
    invariant: one product per part, the invariant's blocks new invariants of the loop."""
    subst: dict[Node, Node] = {}
    for s in graph.nodes:
        if s.op != "scan":
            continue
        split = split_body(s.attrs["body"], s.attrs["n_carry"], s.attrs["n_xs"])
        if split is not None:
            subst[s] = _apply(s, split)
    return substitute(graph, subst) if subst else graph


def split_before_grad(graph: Graph) -> tuple[Graph, list[str]]:
    """`split_concat_matmuls(graph)` for a traced forward (the nn runtime, before `grad`), and
    its report lines: per loop split, how many weight blocks its products now read."""
    out = split_concat_matmuls(graph)
    if out is graph:
        return graph, []
    notes = []
    for s in graph.nodes:
        split = s.op == "scan" and split_body(s.attrs["body"], s.attrs["n_carry"], s.attrs["n_xs"])
        if split:
            where = f"loop {s.scope or '(top)'}"
            notes.append(
                f"split_concat_matmuls ({where}, before grad): its concatenated GEMM operands"
                f" split by parts, {len(split.blocks)} products over row blocks of the weights"
            )
    return out, notes


def split_body(body: Graph, nc: int, nx: int) -> Split | None:
    """The rewrite of `body` (cached per body: the same new body in every compile), or None."""
    cache = _CACHE.setdefault(body, {})
    if (nc, nx) not in cache:
        cache[(nc, nx)] = _Walk(body, nc, nx).result()
    return cache[(nc, nx)]


def _parts(n: Node, inv: dict[Node, int]) -> tuple[Node, Node, int] | None:
    """(the concat, the invariant weight, the weight's axis the parts split) of a matmul
    `concat(.., axis=-1) @ W` (axis 0 of W) or `W @ concat(.., axis=0)` of a 2-D concat
    (axis 1 of W), W a 2-D invariant input; else None."""
    if n.op != "matmul":
        return None
    a, b = n.inputs
    if a.op == "concat" and b in inv and b.ndim == 2 and a.attrs["axis"] % a.ndim == a.ndim - 1:
        return a, b, 0
    if b.op == "concat" and a in inv and a.ndim == 2 and b.ndim == 2 and b.attrs["axis"] % 2 == 0:
        return b, a, 1
    return None


class _Walk:
    """One body's rewrite: which values depend on the carries (`carried`), which the new
    carries depend on (`feeds`), and the weight blocks made so far (one input each)."""

    def __init__(self, body: Graph, nc: int, nx: int):
        self.body, self.nc, self.nx = body, nc, nx
        self.inv = {i: k for k, i in enumerate(body.inputs) if k >= nc + nx}
        carried = set(body.inputs[:nc])
        for n in body.nodes:
            if any(i in carried for i in n.inputs):
                carried.add(n)
        self.carried = carried
        feeds = set(body.outputs[:nc])  # nodes a new carry depends on
        self.users: dict[Node, list[Node]] = {}
        for n in reversed(body.nodes):
            if n in feeds:
                feeds.update(n.inputs)
            for i in n.inputs:
                self.users.setdefault(i, []).append(n)
        self.feeds = feeds
        self.blocks: dict[tuple[int, tuple], Node] = {}  # (weight position, index) -> input

    def result(self) -> Split | None:
        body, env, nodes = self.body, {}, []
        for n in body.nodes:
            if n.op == "input" or n in env:
                continue
            found = _parts(n, self.inv)
            if found is not None and self._mixed(found[0]):
                env[n] = self._products(n, *found, env, nodes)
                continue
            slices = self._column_slices(n)
            if slices is not None:  # (env maps each slice to its own product)
                self._sliced_products(n, slices, env, nodes)
                continue
            ins = tuple(env.get(i, i) for i in n.inputs)
            env[n] = n if ins == n.inputs else n.with_inputs(ins)
            nodes.append(env[n])
        if not self.blocks:
            return None
        outputs = [env.get(o, o) for o in body.outputs]
        nodes = Graph(nodes, [], outputs).eliminate_dead_code().nodes  # (a concat only multiplied)
        read = {i for n in nodes for i in n.inputs} | set(outputs)
        kept = [i for k, i in enumerate(body.inputs) if k < self.nc + self.nx or i in read]
        inputs = kept + list(self.blocks.values())
        new = Graph(inputs + nodes, inputs, outputs, body.meta)
        new.verify()
        return Split(new, tuple(self.blocks))

    def _column_slices(self, n: Node) -> list[tuple[Node, int, int]] | None:
        """A differentiated loop's `concat(..) @ W` backward: `dz @ W^T` (W a 2-D invariant)
        read only by disjoint column slices `[:, a:b]`, some feeding the carries (dh), some
        not (dx: a returned product, which push_out then computes after the loop); each
        slice (user, a, b), else None."""
        if n.op != "matmul" or n.ndim != 2 or n.inputs[0].ndim != 2:
            return None
        t = n.inputs[1]
        if not (t.op == "transpose" and t.inputs[0] in self.inv and t.inputs[0].ndim == 2):
            return None
        full, out = ("s", None, None, None), []
        for u in self.users.get(n, []):
            index = u.attrs.get("index", ()) if u.op == "getitem" else ()
            if n in self.body.outputs or len(index) != 2 or index[0] not in (full, Ellipsis):
                return None
            col = index[1]
            if not (isinstance(col, tuple) and col[0] == "s" and col[3] in (None, 1)):
                return None
            a, b, _ = slice(col[1], col[2]).indices(n.shape[1])
            if b <= a or any(a < d and c < b for _, c, d in out):
                return None
            out.append((u, a, b))
        sides = {u in self.feeds for u, _, _ in out}
        return out if sides == {True, False} else None

    def _sliced_products(self, n: Node, slices: list, env: dict, nodes: list) -> None:
        """Each slice of `dz @ W^T` as dz @ W[a:b]^T, the rows W[a:b] a new invariant."""
        q, w = env.get(n.inputs[0], n.inputs[0]), n.inputs[1].inputs[0]
        for u, a, b in slices:
            block = self._block(w, (("s", a, b, None),), (b - a, w.shape[1]))
            moved = derive(n.inputs[1], "transpose", (block,), axes=(1, 0))
            env[u] = derive(u, "matmul", (q, moved))
            nodes += [moved, env[u]]

    def _mixed(self, concat: Node) -> bool:
        """Some part carried, some not: the uncarried parts' products leave the loop."""
        sides = {p in self.carried for p in concat.inputs}
        return sides == {True, False}

    def _products(self, n: Node, concat: Node, w: Node, axis: int, env: dict, nodes: list) -> Node:
        """The sum of each part's product with its block of `w`'s rows (axis 0) or columns."""
        terms, start = [], 0
        for part in concat.inputs:
            width = part.shape[concat.attrs["axis"]]
            rows = ("s", start, start + width, None)
            index = (rows,) if axis == 0 else (("s", None, None, None), rows)
            block = self._block(w, index, (width, w.shape[1]) if axis == 0 else (w.shape[0], width))
            part = env.get(part, part)
            terms.append(derive(n, "matmul", (part, block) if axis == 0 else (block, part)))
            start += width
        nodes.extend(terms)
        total = derive(n, "add" if len(terms) == 2 else "add_n", terms)
        nodes.append(total)
        return total

    def _block(self, w: Node, index: tuple, shape: tuple) -> Node:
        key = (self.inv[w], index)
        if key not in self.blocks:
            bounds = index[-1]
            name = f"{w.name}[{'' if len(index) == 1 else ':, '}{bounds[1]}:{bounds[2]}]"
            self.blocks[key] = input_like(w, shape, name)
        return self.blocks[key]


def _apply(s: Node, split: Split) -> Node:
    """Scan node `s` over `split`'s body: the kept inputs, then each weight block, a view of
    the weight made outside the loop."""
    a = s.attrs
    old = a["body"]
    position = {i: k for k, i in enumerate(old.inputs)}
    n_kept = len(split.body.inputs) - len(split.blocks)
    ins = [s.inputs[position[i]] for i in split.body.inputs[:n_kept]]
    ins += [derive(s, "getitem", (s.inputs[k],), index=index) for k, index in split.blocks]
    attrs = {k: v for k, v in a.items() if k != "body"}
    return derive(s, "scan", ins, body=split.body, **attrs)
