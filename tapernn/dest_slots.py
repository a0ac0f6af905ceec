"""The slots of `Program.dest` (a mixin of codegen.Program): arrays a caller may hand a program
call to compute a returned value into (a split backward's parameter gradients, into a zeroed
`.grad`: nn/packing.compute_into), or to use as scratch (a forward's transposed weight copy, a
loop prologue's packed panels, in a weight's zeroed `.grad`: nn/packing.scratch_into,
pack_scratch.py)."""

from __future__ import annotations

from .graph import Node
from .ops.registry import PSEUDO, get_op
from .pack_scratch import Lent, pack_slots, param_rows


class DestSlots:
    """`_dest_slots` and `_scratch_slots`, run by Program while it generates its source (they
    read its graph, plan, options, `top`, `written` and `bound`)."""

    def _dest_slots(self, claimed: dict, special: set) -> dict[Node, int]:
        """Returned value -> its slot of `Program.dest`: an array the caller may set before a
        call for the value to be computed into (None: allocated by the call, as any returned
        value). A split backward's outputs (the parameter gradients: nn.packing computes them
        into a zeroed `.grad`) that one NumPy ufunc computes with out= into storage of their
        own made per call, or a concat whose pieces are computed into its rows (one array
        made per call: the caller's, if it gave one); none elsewhere."""
        g, plan = self.graph, self.plan
        self.dest: list = []
        self.dest_slots: dict[int, int] = {}  # output position -> slot
        # input position -> (slot, node, (first, stop) rows of the input it copies or None)
        self.scratch_slots: dict[int, tuple[int, Node, tuple | None]] = {}
        self.pack_slots: dict[int, int] = {}  # a loop prologue's: output position -> slot
        least = self.options.grad_into_min_bytes
        if least <= 0:
            return {}
        if not self.top:  # (a loop prologue's packed panels: pack_scratch.py)
            into, self.pack_slots = pack_slots(g, plan, least)
            self.dest = Lent(len(into))
            if into:
                self.bound["_dest"] = self.dest
            return into
        if not g.meta.seed_names:
            return self._scratch_slots(least)
        alias = set(g.meta.outputs_may_alias_inputs)
        into: dict[Node, int] = {}
        for k, n in enumerate(g.outputs):
            opdef = None if n.op in PSEUDO else get_op(n.op)
            ufunc = opdef is not None and opdef.ufunc is not None and opdef.lower is None
            if (
                not (ufunc and opdef.supports_out and n not in special)
                and n not in plan.placed_concats  # (its pieces into its rows: the per-call array)
                or n in plan.slab_roots
                or n in claimed
                or k in self.written
                or g.outputs.count(n) != 1
                or n.nbytes < least
                or plan.storage.get(n) is not n
                or n not in plan.fresh
                or n in plan.placed
                or plan.copied(n, k in alias)
            ):
                continue
            into[n] = self.dest_slots[k] = len(self.dest)
            self.dest.append(None)
        if into:
            self.bound["_dest"] = self.dest
        return into

    def _scratch_slots(self, least: int) -> dict[Node, int]:
        """A forward's per-call transposed copy of a weight input (passes/loop_operands.py,
        arena.per_call) -> its slot of `Program.dest`: the caller may hand it the weight's
        zeroed `.grad`, of the same size, as scratch (nn/packing.scratch_into), which it zeroes
        again after the call; None: allocated by the call."""
        g, plan = self.graph, self.plan
        position = {n: k for k, n in enumerate(g.inputs)}
        into: dict[Node, int] = {}
        for n in g.nodes:
            w = n.inputs[0] if n.op == "transpose_copy" else None
            # a parameter, or rows a:b of a parameter block (the same rows of its .grad)
            found = None if w is None or w.op == "transpose" else param_rows(w, position)
            if (
                found is None
                or n not in plan.fresh
                or n in g.outputs
                or n.nbytes < least
                or found[0] in self.scratch_slots
            ):
                continue
            into[n] = len(self.dest)
            self.scratch_slots[found[0]] = (len(self.dest), n, found[1])
            self.dest.append(None)
        if into:
            self.bound["_dest"] = self.dest
        return into
