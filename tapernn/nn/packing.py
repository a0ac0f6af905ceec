"""Parameter blocks: the parameters one module registers with the same dtype and the same
trailing shape live as consecutive rows of one array (their `.data` and `.grad` are views), as
Torch7's getParameters and cuDNN's flattened weights keep them.

Why: gate fusion turns x@W_i, x@W_f, ... into x@[W_i W_f ...]. When W_i, W_f, ... are rows of
one block, that concatenation is the block itself, so `LSTM` runs without copying its weights
every call; its 12 gradients leave the backward program as three block gradients (one add
each), and zero_grad/update touch three arrays instead of twelve.

Blocks are an optimisation, never a semantic: rebinding a member (`p.data = other`, `p.grad =
other`) marks its block broken, and programs then concatenate the members per call and
accumulate member by member; writing in place (`p.data[...] = x`) keeps the block.
`Module.flatten_parameters()` rebuilds the blocks from the current arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.lib.array_utils import byte_bounds

from .. import aligned
from ..graph import Graph, Node

# Bumped by every change that can alter which arrays a model's parameters are (a parameter or a
# child registered, `.data`/`.grad` rebound, blocks built): `Module` caches its parameters'
# storage for zero_grad_parameters/update_parameters under the value it saw.
VERSION = [0]


def changed() -> None:
    VERSION[0] += 1


class Block:
    """Parameters stored as row ranges [start, stop) of one data and one grad array.
    `intact` turns False for good when a member's `.data` or `.grad` is rebound."""

    __slots__ = ("data", "grad", "intact", "members", "rows")

    def __init__(self, members: Iterable[Any]):
        self.members = tuple(members)
        # (64-byte aligned: the packed GEMM's panels go into rows of a .grad, pack_scratch.py)
        self.data = _aligned_rows([p.data for p in self.members])
        self.grad = _aligned_rows([p.grad for p in self.members])
        self.rows, start = [], 0
        for p in self.members:
            self.rows.append((start, start + p.data.shape[0]))
            start += p.data.shape[0]
        for p, (a, b) in zip(self.members, self.rows):
            p.data, p.grad = self.data[a:b], self.grad[a:b]  # (leaves any older block)
            p._block = self
        self.intact = True
        changed()

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.members)
        return f"Block({names}; shape={self.data.shape}, dtype={self.data.dtype})"


def _aligned_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """np.concatenate(arrays, axis=0) into a 64-byte aligned array."""
    first = arrays[0]
    rows = sum(x.shape[0] for x in arrays)
    dtype = np.result_type(*arrays)
    return np.concatenate(arrays, axis=0, out=aligned.empty((rows, *first.shape[1:]), dtype))


def block_key(p: Any) -> tuple | None:
    """Parameters with equal keys can share a block (scalars cannot: they have no rows)."""
    if p.data.ndim == 0:
        return None
    return (p.data.dtype.str, p.data.shape[1:])


def pack_module(module: Any, only: tuple | None = None) -> None:
    """(Re)build `module`'s own blocks from its parameters' current arrays (only the block of
    key `only` when given): registration order, one block per key holding two or more
    parameters the module created itself (`Parameter` objects a user assigned are left alone)."""
    groups: dict[tuple, list] = {}
    for p in module._params.values():
        key = block_key(p)
        if key is not None and p._home is module and (only is None or key == only):
            groups.setdefault(key, []).append(p)
    for members in groups.values():
        if len(members) >= 2:
            Block(members)
        elif members[0]._block is not None:  # its block-mates left (rebound): it is loose
            members[0]._block.intact = False
            members[0]._block = None
            changed()


def unpack_parameters(module: Any) -> None:
    """Give every blocked parameter of `module` arrays of its own (the layout before blocks,
    for before/after comparisons); `module.flatten_parameters()` packs them again."""
    for p in module.parameters():
        if p._block is not None:
            p.data, p.grad = p.data.copy(), p.grad.copy()


def intact_block(p: Any) -> Block | None:
    blk = p._block
    return blk if blk is not None and blk.intact else None


def storage(params: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """(data, grad) arrays covering `params` exactly once: a whole intact block when all its
    members are in `params`, else each parameter's own arrays."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    blocks: set[Block] = set()
    wanted: set | None = None
    for p in params:
        blk = p._block
        if blk is None:
            out.append((p.data, p.grad))
            continue
        if blk in blocks:
            continue
        blocks.add(blk)
        wanted = set(params) if wanted is None else wanted
        if blk.intact and wanted.issuperset(blk.members):
            out.append((blk.data, blk.grad))
        else:  # (a rebound member has left the block: it comes as a loose parameter)
            out.extend((m.data, m.grad) for m in blk.members if m in wanted and m._block is blk)
    return out


class Group:
    """One block as a program input: its members present in a traced graph (by input node)."""

    def __init__(self, block: Block, nodes: dict[Any, Node]):
        self.block = block
        self.members = block.members
        self.rows = list(block.rows)
        self.nodes = [nodes.get(p) for p in self.members]  # None: not read by this graph
        first = next(n for n in self.nodes if n is not None)
        self.input = Node(
            "input",
            (),
            {"kind": "param"},
            block.data.shape,
            block.data.dtype,
            scope=first.scope,
            name=_block_name(first.name, self.members),
        )

    def bind(self) -> np.ndarray:
        if self.block.intact:
            return self.block.data
        # a member was rebound (p.data = other) or the block rebuilt: copy the members
        return np.concatenate([p.data for p in self.members], axis=0, dtype=self.block.data.dtype)

    def accumulate(self, g: np.ndarray) -> None:
        if self.block.intact:
            if g is not self.block.grad:  # (computed into it: Packing.compute_into)
                self.block.grad += g
            return
        for p, (a, b) in zip(self.members, self.rows):
            grad = p.grad  # (in place; `p.grad += ...` would also rebind it through the setter)
            grad += g[a:b]


def _block_name(first: str, members: tuple) -> str:
    owner = first.rsplit(".", 1)[0] + "." if "." in first else ""
    return owner + "[" + " ".join(p.name for p in members) + "]"


class Packing:
    """How one traced graph's parameter inputs map onto blocks: `rewrite` replaces the blocked
    parameter inputs by row slices of one input per block (and their gradients by one gradient
    per block); `bind` and `accumulate` are the run-time halves."""

    def __init__(self, params: list, nodes: list[Node]):
        by_param = dict(zip(params, nodes))
        self.groups: list[Group] = []
        seen: set[Block] = set()
        for p in params:
            blk = intact_block(p)
            if blk is None or blk in seen:
                continue
            seen.add(blk)
            if sum(m in by_param for m in blk.members) >= 2:
                self.groups.append(Group(blk, by_param))
        blocked = {p for g in self.groups for p in g.members}
        self.loose = [k for k, p in enumerate(params) if p not in blocked]
        self.params = params
        self._group_of = {n: g for g in self.groups for n in g.nodes if n is not None}
        self.n_grads = len(self.loose) + len(self.groups)

    def _rows(self, n: Node) -> Node | None:
        g = self._group_of.get(n)
        if g is None:
            return None
        a, b = g.rows[g.nodes.index(n)]
        if (a, b) == (0, g.input.shape[0]):
            return g.input
        # rows a:b of the block, in the IR's slice encoding (ops/shape.py), tagged like n
        return Node(
            "getitem",
            (g.input,),
            {"index": (("s", a, b, None),)},
            (b - a,) + g.input.shape[1:],
            g.input.dtype,
            step=n.step,
            scope=n.scope,
            phase=n.phase,
        )

    def inputs(self, inputs: list[Node]) -> list[Node]:
        """A rewritten graph's inputs: each block's at its first member's place."""
        out: list[Node] = []
        for n in inputs:
            g = self._group_of.get(n)
            if g is None:
                out.append(n)
            elif g.input not in out:
                out.append(g.input)
        return out

    def rewrite(self, graph: Graph, param_grads: tuple[int, int] | None = None) -> Graph:
        """`graph` reading the block inputs; `param_grads` = (start, stop) of the outputs that
        are the parameters' gradients (in `params` order): they become the loose parameters'
        gradients, then one per block (its members' in row order, zeros for absent ones)."""
        if not self.groups:
            return graph
        # each member's input becomes its rows of the block's input (placed before its first
        # slice by rebuild, as a missing operand)
        rebuilt = graph.rebuild(lambda n, _: self._rows(n))
        nodes, outputs, meta = list(rebuilt.nodes), list(rebuilt.outputs), graph.meta
        if param_grads is not None:
            start, stop = param_grads
            grads = outputs[start:stop]
            by_param = dict(zip(self.params, grads))
            joined = []
            for g in self.groups:
                pieces = []
                for p in g.members:
                    q = by_param.get(p)
                    if q is None:  # not read by this graph: no gradient
                        q = Node(
                            "zeros",
                            (),
                            {"shape": p.data.shape, "dtype": p.data.dtype.str},
                            p.data.shape,
                            p.data.dtype,
                            scope=g.input.scope,
                            phase="backward",
                        )
                        nodes.append(q)
                    pieces.append(q)
                joined.append(
                    Node(
                        "concat",
                        tuple(pieces),
                        {"axis": 0},
                        g.input.shape,
                        g.input.dtype,
                        scope=g.input.scope,
                        phase="backward",
                    )
                )
            nodes += joined
            outputs = outputs[:start] + [grads[k] for k in self.loose] + joined + outputs[stop:]
            names = meta.output_names
            tail = len(graph.outputs) - start  # names are aligned to the outputs' end
            if names and len(names) >= tail:
                head, rest = list(names[: len(names) - tail]), list(names[len(names) - tail :])
                meta = replace(
                    meta,
                    output_names=tuple(
                        head
                        + [rest[k] for k in self.loose]
                        + [f"grad_{g.input.name}" for g in self.groups]
                        + rest[stop - start :]
                    ),
                )
        return Graph(nodes, self.inputs(graph.inputs), outputs, meta)

    def binders(self, inputs: list[Node], bind_one) -> list:
        """Per input of a rewritten graph: a block's `bind`, or `bind_one(node)`."""
        by_input = {g.input: g for g in self.groups}
        return [
            (lambda leaves, g=by_input[n]: g.bind()) if n in by_input else bind_one(n)
            for n in inputs
        ]

    def accumulate(self, grads: list) -> None:
        """Add the parameter gradients of one backward (loose, then per block) into `.grad`
        (a gradient the backward computed into `.grad` itself, compute_into, is there)."""
        params = self.params
        for k, g in zip(self.loose, grads):
            grad = params[k].grad  # (in place, as Group.accumulate)
            if g is not grad:
                grad += g
        for grp, g in zip(self.groups, grads[len(self.loose) :]):
            grp.accumulate(g)

    def compute_into(self, program: Any, first: int, args: list) -> None:
        """Before `program` (a backward whose outputs first, first + 1, ... are these
        parameter gradients, in accumulate's order) runs on `args`: each gradient it can
        compute into an array of the caller's (codegen's Program.dest) is computed into the
        parameter's `.grad` when that holds only zeros (Torch7 accumulates: zero plus the
        gradient is the gradient, and accumulate skips it) and shares no memory with an
        argument or another gradient computed into its `.grad` (two parameters sharing one,
        Torch7's weight sharing); else made by the call and added. Every other slot is
        cleared. A loop's packed panels (Program.loop_scratch, pack_scratch.py) go into a
        zeroed `.grad` too: the loop's runner zeroes them when it ends, before any gradient
        is computed there."""
        prog = program.program
        slots = getattr(prog, "dest_slots", None)
        if not slots:
            return
        dest, outs = prog.dest, program.graph.outputs
        dest[:] = [None] * len(dest)
        params, n_loose = self.params, len(self.loose)
        for i in range(self.n_grads):
            s = slots.get(first + i)
            if s is None:
                continue
            if i < n_loose:
                grad = params[self.loose[i]].grad
            else:
                block = self.groups[i - n_loose].block
                grad = block.grad if block.intact else None
            # (apart from the destinations chosen too: two parameters sharing a .grad, Torch7's
            # weight sharing -- one is computed into it, the other added)
            if _zeroed(grad, outs[first + i], args + dest):
                dest[s] = grad
        loops = getattr(prog, "loop_scratch", None)
        if loops:  # (a loop's packed panels: the loop zeroes them before this is computed;
            # a .grad just seen to hold zeros above is not read again: nothing ran since)
            known = [d for d in dest if d is not None]
            self._lend([(j, *entry[:4]) for (j, _), entry in loops.items()], args, known)

    def scratch_into(self, program: Any, args: list) -> list:
        """Before the forward `program` runs on `args`: each per-call transposed weight copy it
        can make in an array of the caller's (codegen's Program.scratch_slots) is made in that
        weight's `.grad` when it holds only zeros (the loop zeroes the gradients before each
        step) and is an array of the copy's size, apart from every argument. Returns those
        `.grad` arrays: release_scratch zeroes them again after the call (those of a loop's
        panels last, `Scratch.panels` of them: their loop's runner zeroes them)."""
        prog = program.program
        slots = getattr(prog, "scratch_slots", None) or {}
        loops = getattr(prog, "loop_scratch", None) or {}
        if not slots and not loops:
            return []
        # (a loop's packed panels, pack_scratch.py: in its prologue's dest)
        lent = [(j, prog.dest, s, n, rows) for j, (s, n, rows) in slots.items()]
        panels = [(j, *entry[:4]) for (j, _), entry in loops.items()]
        used = Scratch(self._lend(lent + panels, args))  # (in that order: the panels' last)
        used.panels = sum(dest[s] is not None for _, dest, s, *_ in panels)
        return used

    def _lend(self, lent: list, args: list, known: list = ()) -> list:
        """(input position, dest list, slot, node, rows) -> that weight's (rows of its) `.grad`
        set in the slot where it holds only zeros (`_zeroed`) and shares no memory with one lent
        before it in this call (two row ranges of one `.grad`: pack_scratch._place keeps them
        apart), every other slot cleared; returns those `.grad` arrays."""
        used: list = []
        for j, dest, s, n, rows in lent:
            dest[s] = None  # (a slot a raised call left set is never packed into unchecked)
            getattr(dest, "left", set()).discard(s)
            grad = self._grad_of(args[j])
            if grad is not None and rows is not None:  # (rows a:b of a block's: theirs)
                grad = grad[rows[0] : rows[1]] if grad.shape[0] >= rows[1] else None
            if (
                grad is not None
                and _zeroed(grad, n, args, reshape=True, known=known)
                and not any(np.may_share_memory(grad, u) for u in used)
            ):
                dest[s] = grad.reshape(n.shape)
                used.append(grad)
                if known and _within(grad, known):  # (the backward overwrites it after the
                    dest.left.add(s)  # loop: its runner leaves the panels, pack_scratch.Lent)
        return used

    def _grad_of(self, data: Any) -> np.ndarray | None:
        """The gradient array of the parameter (or intact block) whose data `data` is."""
        for k in self.loose:
            p = self.params[k]
            if p.data is data:
                return p.grad
        for grp in self.groups:
            if grp.block.intact and grp.block.data is data:
                return grp.block.grad
        return None

    @staticmethod
    def release_scratch(program: Any, used: list, ended: bool = False) -> None:
        """After the forward (also when it raised): the `.grad` arrays scratch_into lent it
        hold zeros again, and no slot points at one. `ended`: the call returned -- its loops'
        runners zeroed their panels when the loops ended (scan_run, scan_split), the last
        `used.panels` arrays: not filled again."""
        try:
            for grad in used[: len(used) - getattr(used, "panels", 0)] if ended else used:
                grad.fill(0)
        finally:
            Packing.release(program)

    @staticmethod
    def release(program: Any, raised: bool = False) -> None:
        """After the run: no slot of `program` (or of its loops' prologues) points at a
        `.grad` any more. `raised`: the run raised -- panels a loop left in a `.grad` for the
        backward to overwrite (pack_scratch.Lent.left) are zeroed (the `.grad` held zeros)."""
        dest = getattr(program.program, "dest", None)
        if dest:
            dest[:] = [None] * len(dest)
        for dest, s, *_ in (getattr(program.program, "loop_scratch", None) or {}).values():
            left = getattr(dest, "left", ())
            if s in left:
                if raised and dest[s] is not None:
                    dest[s].fill(0)
                left.discard(s)
            dest[s] = None


class Scratch(list):
    """scratch_into's `.grad` arrays and `panels`: how many of them, last, a loop's panels are
    in (pack_scratch.py: the loop's runner zeroes those when the loop ends)."""

    __slots__ = ("panels",)

    def __init__(self, used: list):
        super().__init__(used)
        self.panels = 0


def _zeroed(grad: Any, n: Node, args: list, reshape: bool = False, known: Any = ()) -> bool:
    """Whether `grad` can take the value of output `n` by out= (its shape and dtype, or with
    `reshape` its size, one aligned writable C-contiguous ndarray) and holds only zeros (read,
    unless its bytes lie within a C-contiguous array of `known`, seen to hold zeros with
    nothing run since), apart from every argument."""
    return (
        type(grad) is np.ndarray
        and (grad.size == n.size if reshape else grad.shape == n.shape)
        and grad.dtype == n.dtype
        and grad.flags.c_contiguous
        and grad.flags.writeable
        and grad.flags.aligned
        and (_within(grad, known) or _zeros(grad))
        and not any(type(a) is np.ndarray and np.may_share_memory(grad, a) for a in args)
    )


def _within(a: np.ndarray, known: Any) -> bool:
    """Whether the bytes of `a` lie within those of a C-contiguous array of `known`."""
    if not known:
        return False
    lo, hi = byte_bounds(a)
    for k in known:
        if k.flags.c_contiguous:
            klo, khi = byte_bounds(k)
            if klo <= lo and hi <= khi:
                return True
    return False


HEAD = 4096  # (elements _zeros looks at first)


def _zeros(a: np.ndarray) -> bool:
    """Whether the C-contiguous `a` holds only zeros: its first HEAD elements first (a
    gradient left from the step before -- the forward after an update -- is seen there
    without a pass over all of it, ~0.15-0.25 ms at 4 MiB: BENCHMARKS.md "h512b"); before
    that its first element alone (a gradient is rarely 0 there: one scalar read answers the
    forward after a backward, ~0.05 ms less than the head's reduce after a step's GEMMs have
    evicted the caches, BENCHMARKS.md "hserial")."""
    flat = a.reshape(-1)
    if flat.size and flat[0] != 0:  # (NaN too: nonzero, as any() says; -0.0 is a zero)
        return False
    return not _nonzero(flat[:HEAD]) and not _nonzero(flat[HEAD:])


# a float's bits but its sign, in each 64-bit word: a float is +-0 exactly when these are 0
_UNSIGNED = {4: np.uint64(0x7FFFFFFF7FFFFFFF), 8: np.uint64(0x7FFFFFFFFFFFFFFF)}


def _nonzero(flat: np.ndarray) -> bool:
    """`flat.any()` of a 1-D C array: for float32 / float64 the OR of its 64-bit words without
    their sign bits (NaN, a subnormal: nonzero; -0.0 a zero), ~2x any()'s speed (BENCHMARKS.md
    "hrest2"); a tail of less than a word, and other dtypes, by any()."""
    mask = _UNSIGNED.get(flat.itemsize) if flat.dtype.kind == "f" else None
    n = flat.nbytes // 8 * 8 // flat.itemsize  # (elements in whole words)
    if mask is None or not n:
        return bool(flat.any())
    return bool(np.bitwise_or.reduce(flat[:n].view(np.uint64)) & mask) or bool(flat[n:].any())
