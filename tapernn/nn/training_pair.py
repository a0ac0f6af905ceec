"""A training pair: the compiled forward and backward programs of one joint graph (their
temporaries in one arena), the backward variants without the data-input gradients, and the
most bytes a steady training loop over the pair holds at once (`step_peak_bytes`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ..accounting import loop_call_bytes, tail_buffers, ufunc_buffers
from ..arena import Arena, compile_into, compile_shared
from ..donate import donatable
from ..executor import Compiled
from ..graph import Graph
from ..memory import PSEUDO
from ..regions import DEFAULT_OPTIONS, PlanOptions
from ..view_strides import copy_roots, copying_reshapes


class TrainingPair:
    """Compiled forward (outputs, then saved values) and backward (saved values, seeds, then the
    forward arguments it reads) programs of one joint graph. Their preallocated temporaries
    share one arena (they never run at the same time); `resident_bytes` is the pair's total:
    the arena plus both programs' per-call values."""

    def __init__(
        self,
        fwd: Graph,
        bwd: Graph,
        joint: Graph,
        passes: list,
        options: PlanOptions = DEFAULT_OPTIONS,
        arena: Arena | None = None,
    ):
        self.joint = joint  # forward and backward together, for diagrams
        self.n_saved = len(bwd.meta.saved_names)
        self.n_seeds = len(bwd.meta.seed_names)
        position = {n: k for k, n in enumerate(fwd.inputs)}
        self.reads = [position[n] for n in bwd.inputs[self.n_saved + self.n_seeds :]]
        self.saved_bytes = sum(n.nbytes for n in fwd.outputs[len(fwd.outputs) - self.n_saved :])
        # the two programs run alternately: their temporaries share one arena
        self.arena = arena  # shared with the module's other programs (None: the pair's own)
        self.forward, self.backward = compile_shared(
            [fwd, bwd], passes, options, arena=arena, n_saved=self.n_saved
        )
        self.resident_bytes = self.forward.report.resident_bytes
        # the saved values the backward variants may write over too (PlanOptions.dz_in_gates)
        self.donate = (
            donatable(self.forward.graph, self.forward.program.plan, self.n_saved)
            if options.dz_in_gates
            else {}
        )
        self.bwd_graph, self.passes, self.options = bwd, passes, options
        self.variants: dict[int, Compiled] = {}
        self.last_backward = self.backward  # the program compile_report shows
        self._rooms: dict[int, tuple[int, int] | None] = {}  # id(backward program) -> tap_room

    def saved(self, outs: tuple) -> list:
        return list(outs[len(outs) - self.n_saved :]) if self.n_saved else []

    def backward_program(self, skip: int) -> Compiled:
        """The backward program without its first `skip` outputs (the data-input gradients,
        for backward(..., need_grad_input=False)): the same inputs (the forward's saved values
        are those of the full pair), the work only those gradients needed removed as dead code
        by the pipeline. Compiled on first use."""
        if skip == 0:
            return self.backward
        if skip not in self.variants:
            g = self.bwd_graph
            meta = replace(g.meta, output_names=g.meta.output_names[skip:])
            self.variants[skip] = compile_into(
                Graph(g.nodes, g.inputs, g.outputs[skip:], meta),
                self.arena,
                self.passes,
                self.options,
                donate=self.donate,
            )
        return self.variants[skip]

    def tap_room(self, program: Compiled) -> tuple[int, int] | None:
        """(saved position j, bytes): the leading bytes of saved value j that are dead once
        `program` (a backward of this pair) has returned, and that stay allocated after it
        anyway: a loop of `program` was computed there (donate.donations: no returned value
        views them, no other forward output reads them) and a kept forward output (`output`,
        a rolled loop's h block) holds the same storage. get_grad_hidden_state's copies go
        there (state_grads.tap_copies). None: there are no such bytes, or fewer than
        PlanOptions.tap_room_min_bytes."""
        key = id(program)
        if key not in self._rooms:
            self._rooms[key] = self._find_room(program)
        return self._rooms[key]

    def _find_room(self, program: Compiled) -> tuple[int, int] | None:
        fwd = self.forward
        outs, plan = fwd.graph.outputs, fwd.program.plan
        n_kept = len(outs) - self.n_saved
        kept = {plan.storage.get(o) for o in outs[:n_kept] if o.op not in PSEUDO}
        inputs = program.graph.inputs
        best = None
        tails = program.program.plan.tail_of
        for s, inp in program.program.plan.donated.items():
            j = inputs.index(inp)
            # (up to a returned GEMM computed over the rows' tail: donate.tail_gemms)
            size = min([s.nbytes] + [o * s.dtype.itemsize for i, o in tails.values() if i is inp])
            if j < self.n_saved and outs[n_kept + j] in kept and (best is None or size > best[1]):
                best = (j, size)
        if best is not None and best[1] < self.options.tap_room_min_bytes:
            return None  # (too small to pay for the placement: PlanOptions.tap_room_min_bytes)
        return best

    def run_backward(
        self, saved: list, args: list, seeds: list, skip: int = 0, into: tuple | None = None
    ) -> tuple:
        """The gradients; with `skip`, the first `skip` of them are not computed (None). With
        `into` = (the model's nn.packing.Packing, the position of the first parameter gradient
        among the outputs) those are computed into the zeroed `.grad` arrays themselves where
        they can be (Packing.compute_into); without it no slot points at a `.grad`."""
        program = self.last_backward = self.backward_program(skip)
        args = saved + seeds + [args[k] for k in self.reads]
        if into is None:
            dest = getattr(program.program, "dest", None)
            if dest:
                dest[:] = [None] * len(dest)
            grads = program.run(args)
        else:
            packing, first = into
            packing.compute_into(program, first, args)
            try:  # (the weight gradients into zeroed .grad arrays themselves)
                grads = program.run(args)
            except BaseException:
                packing.release(program, True)
                raise
            packing.release(program)
        return (None,) * skip + tuple(grads) if skip else grads

    def step_peak_bytes(
        self,
        n_data_grads: int,
        tap_bytes: int = 0,
        held: tuple[int, int] | None = None,
        n_param_grads: int = 0,
    ) -> int:
        """Most bytes a steady training loop (forward, backward, update; the Runtime's
        lifetimes) holds at once beyond the parameters, their gradients and the caller's data:
        what tracemalloc shows (tests/test_memory_loop.py). The buffers (the module's one Arena,
        or the pair's own and its variants') and the dropout masks always; then the larger of
        the forward's end (its per-call peak: the new outputs and saved values; the previous
        call's outputs and `grad_input` were dropped before it ran) and, with this call's kept
        outputs (`output`, per-step fields, final states; a rolled loop's whole slab, which
        they are views of), the larger of backward (the saved values it reads, released when
        it returns, plus its per-call peak: gradients and temporaries) and just after it
        (`grad_input`, plus `tap_bytes`: the copies a Sequencer keeps for
        get_grad_hidden_state, made once the parameter gradients are accumulated; the caller adds
        the update's temporary, optim.update_temp_bytes, which is made while they are held).
        Stepped by hand (`held` = (n, input bytes)): n steps' records (kept outputs, saved
        values, masks, the copy of the step's input) are held at once before backward. The
        `n_param_grads` parameter gradients after the data inputs' are computed into the zeroed
        `.grad` arrays where the backward can (Packing.compute_into: the loop zeroes them before
        each backward), not allocated; stepped by hand they are (only the first step's is not).
        Likewise the forward's transposed weight copies go into the zeroed `.grad` arrays
        (Packing.scratch_into) when `n_param_grads` and not stepped by hand."""
        fwd, bwd = self.forward, self.last_backward
        n_kept = len(fwd.graph.outputs) - self.n_saved
        kept = _storages(fwd, range(n_kept))
        saved_only = {
            k: b
            for k, b in _storages(fwd, range(n_kept, len(fwd.graph.outputs))).items()
            if k not in kept
        }
        n_dx = n_data_grads if bwd is self.backward else 0
        # (and the parameter gradients a whole-program kernel makes -- it computes none into
        # `.grad` -- still held by its results while the tap copies are made; measured:
        # tests/test_hpeak_numba.py)
        made = range(n_dx, n_dx + n_param_grads) if _whole_program(bwd) else range(0)
        grad_input = sum(_storages(bwd, [*range(n_dx), *made]).values())
        buffers = (
            self.arena.nbytes
            if self.arena is not None
            else fwd.report.arena_bytes
            + sum(v.program.plan.buffer_bytes for v in self.variants.values())
            + fwd.report.workspace_bytes
            + bwd.report.workspace_bytes
        )
        # (stepped by hand, the steps' backwards add to the gradients the first one made)
        into = range(n_dx, n_dx + n_param_grads) if held is None else ()
        moments = (
            per_call_peak(fwd, scratch=held is None and n_param_grads > 0),
            sum(saved_only.values())
            + per_call_peak(bwd, into, scratch=held is None and n_param_grads > 0),
            grad_input + tap_bytes,  # the parameter gradients are accumulated before the copies
        )
        # the dropout masks the last forward drew stay with its record until the next one's
        masks = sum(n.nbytes for n in fwd.graph.inputs if n.kind == "random")
        kept_b, saved_b = sum(kept.values()), sum(saved_only.values())
        if held is None:  # the previous call's outputs and grad_input are dropped before a forward
            return buffers + masks + max(moments[0], kept_b + max(moments[1:]))
        steps, inputs = held
        step_bytes = kept_b + saved_b + masks + inputs
        moments = (moments[0], kept_b + moments[1], moments[2])
        return buffers + (steps - 1) * step_bytes + masks + inputs + grad_input + max(moments)


def _storages(c: Compiled, positions) -> dict:
    """Bytes of the arrays a program returns at `positions`, once per storage (a value and its
    views, or values computed into one array, count once; a returned copy, once per place)."""
    plan, graph = c.program.plan, c.graph
    alias = set(graph.meta.outputs_may_alias_inputs)
    out: dict = {}
    for k in positions:
        o = graph.outputs[k]
        if plan.copied(o, k in alias):
            out[("copy", k)] = o.nbytes
        elif plan.storage.get(o) in plan.tail_of:
            continue  # (in a saved value a kept output holds: donate.tail_gemms)
        elif o.op not in PSEUDO and plan.storage.get(o) is not None:
            st = plan.storage[o]
            out[st] = st.nbytes
    return out


def reshape_copies(graph: Graph) -> list[tuple[int, int, int]]:
    """(schedule index, last read through its views or len(nodes) if returned, bytes) of each
    reshape NumPy will copy (view_strides.py): codegen `del`s it after that read."""
    copies = copying_reshapes(graph)
    if not copies:
        return []
    roots, end = copy_roots(graph, copies), len(graph.nodes)
    pos = {n: k for k, n in enumerate(graph.nodes)}
    last = {r: pos[r] for r in copies}
    for k, n in enumerate(graph.nodes):
        for i in n.inputs:
            if i in roots:
                last[roots[i]] = max(last[roots[i]], k)
    for o in graph.outputs:
        if o in roots:
            last[roots[o]] = end
    return [(pos[r], last[r], r.nbytes) for r in copies]


def _whole_program(c: Compiled) -> bool:
    """Whether `c` runs a whole-program numba kernel (backends/numba_program.py)."""
    from ..backends.numba_program import WHOLE

    return c.report.kernel.startswith(WHOLE)


def _into_slots(c: Compiled) -> dict:
    """The output positions `c` can compute into the caller's arrays (Program.dest_slots);
    none for a whole-program numba kernel, which makes every out itself (numba_program.runner:
    per call, or scratch its steady runner keeps)."""
    return {} if _whole_program(c) else getattr(c.program, "dest_slots", {})


def per_call_peak(c: Compiled, into: Iterable[int] = (), scratch: bool = False) -> int:
    """Most bytes of a program's per-call storage live at once during a call: each is allocated
    at its first write and freed at its last read (codegen `del`s it), returned ones live to
    the end, where copies of returned buffer values are added (memory._peak for them alone);
    the copies reshapes of strided views make, which the plan sees as views; what each loop
    allocates for the length of its call (`loop_call_bytes`); and NumPy's buffer for a
    broadcasting ufunc call (`ufunc_buffers`) and a GEMM's over a donated loop's rows
    (`tail_buffers`) during it. `into`: positions of outputs computed
    into the caller's arrays (Program.dest, `_into_slots`), not allocated; `scratch`: the forward's
    transposed weight copies and the loops' packed panels made in the weights' zeroed `.grad`
    (Program.scratch_slots and loop_scratch, Packing.scratch_into), not allocated."""
    plan, end = c.program.plan, len(c.graph.nodes)
    slots = _into_slots(c)
    given = {c.graph.outputs[k] for k in into if k in slots}
    lent: dict[int, int] = {}  # scan node key -> bytes of its panels made in a .grad
    if scratch:
        given |= {n for _, n, _ in getattr(c.program, "scratch_slots", {}).values()}
        for _, _, pack, _, key in (getattr(c.program, "loop_scratch", None) or {}).values():
            lent[key] = lent.get(key, 0) + pack.nbytes
    delta = [0] * (end + 2)
    at_end = 0
    for st in plan.fresh:
        if st in given:
            continue
        start = plan.alloc_at.get(st, 0)
        stop = min(plan.release_at.get(st, start), end)
        delta[start] += st.nbytes
        delta[stop + 1] -= st.nbytes
        at_end += st.nbytes if plan.release_at.get(st, start) >= end else 0
    for start, stop, nbytes in reshape_copies(c.graph):
        delta[start] += nbytes
        delta[min(stop, end) + 1] -= nbytes
        at_end += nbytes if stop >= end else 0
    extra = [
        *loop_call_bytes(c.graph, c.report.loops, lent),
        *ufunc_buffers(c.graph),
        *tail_buffers(c.graph, plan),
    ]
    for k, nbytes in extra:
        delta[k] += nbytes
        delta[k + 1] -= nbytes
    live = peak = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return max(peak, at_end + plan.copied_bytes)
