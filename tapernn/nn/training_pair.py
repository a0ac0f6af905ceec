"""A training pair: the compiled forward and backward programs of one joint graph (their
temporaries in one arena), and the backward variants without the data-input gradients."""
from __future__ import annotations

from dataclasses import replace

from ..arena import compile_shared
from ..executor import Compiled, compile
from ..graph import Graph
from ..regions import DEFAULT_OPTIONS, PlanOptions


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
