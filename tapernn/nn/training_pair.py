"""A training pair: the compiled forward and backward programs of one joint graph (their
temporaries in one arena), the backward variants without the data-input gradients, and the
most bytes a steady training loop over the pair holds at once (`step_peak_bytes`)."""
from __future__ import annotations

from dataclasses import replace

from ..executor import Compiled, compile, compile_shared
from ..graph import Graph
from ..regions import DEFAULT_OPTIONS, PSEUDO, PlanOptions


class TrainingPair:
    """Compiled forward (outputs, then saved values) and backward (saved values, seeds, then the
    forward arguments it reads) programs of one joint graph. Their preallocated temporaries
    share one arena (they never run at the same time); `resident_bytes` is the pair's total:
    the arena plus both programs' per-call values."""

    def __init__(self, fwd: Graph, bwd: Graph, joint: Graph, passes: list,
                 options: PlanOptions = DEFAULT_OPTIONS):
        self.joint = joint  # forward and backward together, for diagrams
        self.n_saved = len(bwd.meta.saved_names)
        self.n_seeds = len(bwd.meta.seed_names)
        position = {n: k for k, n in enumerate(fwd.inputs)}
        self.reads = [position[n] for n in bwd.inputs[self.n_saved + self.n_seeds:]]
        self.saved_bytes = sum(n.nbytes for n in fwd.outputs[len(fwd.outputs) - self.n_saved:])
        # the two programs run alternately: their temporaries share one arena
        self.forward, self.backward = compile_shared([fwd, bwd], passes, options)
        self.resident_bytes = self.forward.report.resident_bytes
        self.bwd_graph, self.passes, self.options = bwd, passes, options
        self.variants: dict[int, Compiled] = {}
        self.last_backward = self.backward  # the program compile_report shows

    def saved(self, outs: tuple) -> list:
        return list(outs[len(outs) - self.n_saved:]) if self.n_saved else []

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
            self.variants[skip] = compile(Graph(g.nodes, g.inputs, g.outputs[skip:], meta),
                                          self.passes, self.options)
        return self.variants[skip]

    def run_backward(self, saved: list, args: list, seeds: list, skip: int = 0) -> tuple:
        """The gradients; with `skip`, the first `skip` of them are not computed (None)."""
        program = self.last_backward = self.backward_program(skip)
        grads = program.run(saved + seeds + [args[k] for k in self.reads])
        return (None,) * skip + tuple(grads) if skip else grads

    def step_peak_bytes(self, n_data_grads: int, tap_bytes: int = 0) -> int:
        """Most bytes a steady training loop (forward, backward, update; the Runtime's
        lifetimes) holds at once beyond the parameters, their gradients and the caller's data:
        what tracemalloc shows (tests/test_memory_loop.py). The buffers (the shared arena, and
        the variant backward's own) always; the last call's kept outputs (`output`, per-step
        fields, final states) and `grad_input` until the next call replaces them; then the
        larger of three moments: the forward's end (its per-call peak: the new outputs and
        saved values), backward (the saved values it reads, released when it returns, plus
        its per-call peak: gradients and temporaries), and just after it (the gradients it
        returned, plus `tap_bytes`: the copies a Sequencer keeps for get_grad_hidden_state)."""
        fwd, bwd = self.forward, self.last_backward
        n_kept = len(fwd.graph.outputs) - self.n_saved
        kept = _storages(fwd, range(n_kept))
        saved_only = {k: b for k, b in _storages(fwd, range(n_kept, len(fwd.graph.outputs)))
                      .items() if k not in kept}
        n_dx = n_data_grads if bwd is self.backward else 0
        grad_input = sum(_storages(bwd, range(n_dx)).values())
        returned = sum(_storages(bwd, range(len(bwd.graph.outputs))).values())
        buffers = fwd.report.arena_bytes + sum(v.program.plan.buffer_bytes
                                               for v in self.variants.values())
        moments = (fwd.program.plan.fresh_peak_bytes,
                   sum(saved_only.values()) + bwd.program.plan.fresh_peak_bytes,
                   returned + tap_bytes)
        return buffers + sum(kept.values()) + grad_input + max(moments)


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
        elif o.op not in PSEUDO and plan.storage.get(o) is not None:
            st = plan.storage[o]
            out[st] = st.nbytes
    return out
